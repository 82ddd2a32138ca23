"""The device kit (issue 20): what a lent GPU machine needs to run ``benchmarks/gpu_protocol.sh``.

The device has no network and its own Python 3.12 (torch 2.11, timm, opencv, scikit-*, pandas, matplotlib,
tqdm, pyyaml, pytest, nvidia-ml-py; no mlflow, optuna, albumentations, pretrainedmodels), and only the working
tree plus up to 8 carried paths (64 MiB in all) travel. So the kit is one ignored folder, ``kit/``, carried:

- ``kit/wheels/``: py3.12 manylinux x86_64 wheels of what the device lacks (mlflow-skinny instead of mlflow:
  no server UI, a fraction of the size; optuna; albumentations + albucore; pretrainedmodels built here, pure
  Python) and their dependencies, minus every package the device image already has (``DEVICE_HAS``);
- ``kit/tgs.npz``: the real training tiles packed small (images uint8, masks bit-packed, depths, ids);
  ``unpack`` writes them back as a Kaggle-layout folder there.

    .venv/bin/python benchmarks/device_kit.py build [--data ../shared/tgs] [--kit kit]   (make device-kit)
    python3 benchmarks/device_kit.py unpack kit/tgs.npz /tmp/tgs                         (on the device)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 60.0  # the carried tree may be 64 MiB in all: the kit leaves room for the repository itself
NEEDS = ["mlflow-skinny==3.17.2", "optuna==5.0.0", "albumentations==2.0.8", "albucore==0.0.24"]
BUILT_HERE = ["pretrainedmodels==0.7.4"]  # an sdist only: built into a wheel here (pure Python)
# the device image's packages (KINDS.md, "Python packages already there", read 2026-11-17): never carried
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
opencv-python-headless
""".split())
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux_2_28_x86_64", "--platform", "any"]


def project_of(wheel: str) -> str:
    """The normalised project name of a wheel file name (PEP 427: name-version-...)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def pack_data(root: Path, out: Path) -> Path:
    """The training tiles of a Kaggle-layout folder as one compressed array file."""
    sys.path.insert(0, str(REPO))
    from salt_exp.data.kaggle import load_kaggle

    train = load_kaggle(root).train
    masks = train.masks.astype(bool)
    np.savez_compressed(out, ids=train.ids.astype(str), images=train.images, depths=train.depths,
                        masks=np.packbits(masks, axis=-1), mask_width=np.int64(masks.shape[-1]))
    return out


def unpack_data(npz: Path, root: Path) -> Path:
    """A Kaggle-layout training folder (images, masks, train.csv, depths.csv) from :func:`pack_data`'s file."""
    sys.path.insert(0, str(REPO))
    from salt_exp.data.pngio import write_image, write_mask
    from salt_exp.data.rle import rle_encode

    z = np.load(npz)
    ids, images, depths = z["ids"], z["images"], z["depths"]
    masks = np.unpackbits(z["masks"], axis=-1)[..., : int(z["mask_width"])].astype(np.uint8)
    for sub in ("train/images", "train/masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows, depth_rows = [], []
    for i, tile in enumerate(ids):
        write_image(root / "train" / "images" / f"{tile}.png", images[i])
        write_mask(root / "train" / "masks" / f"{tile}.png", masks[i])
        rows.append(f"{tile},{rle_encode(masks[i])}")
        depth_rows.append(f"{tile},{int(depths[i])}")
    (root / "train.csv").write_text("id,rle_mask\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "depths.csv").write_text("id,z\n" + "\n".join(depth_rows) + "\n", encoding="utf-8")
    return root


def download_wheels(dest: Path) -> list[str]:
    """Wheels of ``NEEDS`` + ``BUILT_HERE`` and their dependencies for the device, minus what it has."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "download", "--dest", str(dest), *TARGET, *NEEDS], check=True)
    with tempfile.TemporaryDirectory() as tmp:  # pure-Python sdists: build here, their dependencies as wheels
        subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", tmp, *BUILT_HERE], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            shutil.copy(wheel, dest / wheel.name)
    subprocess.run([*pip, "download", "--dest", str(dest), *TARGET, "munch"], check=True)  # pretrainedmodels' dep
    dropped = []
    for wheel in sorted(dest.glob("*.whl")):
        if project_of(wheel.name) in DEVICE_HAS:
            wheel.unlink()
            dropped.append(wheel.name)
    return dropped


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def build(args: argparse.Namespace) -> int:
    kit = Path(args.kit)
    kit.mkdir(parents=True, exist_ok=True)
    data = pack_data(Path(args.data), kit / "tgs.npz")
    print(f"data: {data} {size_mb(kit) :.1f} MiB")
    dropped = download_wheels(kit / "wheels")
    wheels = sorted(p.name for p in (kit / "wheels").glob("*.whl"))
    print(f"wheels: {len(wheels)} carried ({size_mb(kit / 'wheels'):.1f} MiB), {len(dropped)} dropped (on the device "
          f"already): {', '.join(wheels)}")
    total = size_mb(kit)
    print(f"kit: {kit} {total:.1f} MiB (limit {LIMIT_MB:.0f} MiB with the repository)")
    if total > LIMIT_MB:
        print(f"error: the kit is {total:.1f} MiB, over {LIMIT_MB:.0f} MiB", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="pack the data and download the wheels into the kit folder")
    b.add_argument("--data", default=str(REPO.parent / "shared" / "tgs"))
    b.add_argument("--kit", default=str(REPO / "kit"))
    u = sub.add_parser("unpack", help="the packed tiles back as a Kaggle-layout folder (on the device)")
    u.add_argument("npz")
    u.add_argument("root")
    args = p.parse_args(argv)
    if args.command == "build":
        return build(args)
    print(f"wrote {unpack_data(Path(args.npz), Path(args.root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
