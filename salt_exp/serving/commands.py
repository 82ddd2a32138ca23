"""``salt-exp predict MODEL_URI`` and ``salt-exp serve``: a registered model applied to new tiles.

``predict`` loads the model as MLflow does (``mlflow.pyfunc.load_model``: any ``models:/name@alias``,
``models:/name/version``, ``models:/<model_id>`` or ``runs:/<run_id>/<model name>`` URI), then runs its
predictor directly so that a progress bar can follow it; the output is a Kaggle submission (``.csv``),
a folder of mask PNGs in the train/masks format, or an ``.npz`` of ids and arrays. ``serve`` is
``mlflow models serve`` on the project's store, in this environment (``--env-manager local``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salt_exp import contract as C
from salt_exp.errors import SaltError, one_line
from salt_exp.stores import tracking_uri


@dataclass(frozen=True)
class Tiles:
    ids: list[str]
    images: np.ndarray  # (N, 101, 101) uint8
    depths: np.ndarray | None
    positions: list | None  # per tile (mosaic_id, x, y) or None (the model's stored position)


def check_model_uri(uri: str) -> None:
    """A one-line SaltError for a URI MLflow cannot resolve in this store (unknown model, version or alias)."""
    from mlflow.exceptions import MlflowException

    from salt_exp.tracking import client

    where = tracking_uri()
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/")[0]
        try:
            client().get_run(run_id)
        except MlflowException:
            raise SaltError(f"{uri}: no run {run_id} in {where}") from None
        return
    if not uri.startswith("models:/"):
        raise SaltError(f"{uri}: expected models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id> or "
                        "runs:/<run_id>/<model name>")
    rest = uri[len("models:/"):]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            _registered(name, where)
            client().get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.split("/", 1)
            _registered(name, where)
            client().get_model_version(name, version)
        elif rest.startswith("m-"):
            client().get_logged_model(rest)
        else:
            _registered(rest, where)
            raise SaltError(f"{uri}: name a version or an alias (models:/{rest}@{C.CHAMPION} or models:/{rest}/<version>)")
    except MlflowException as exc:
        raise SaltError(f"{uri}: {_first_line(exc)} (store {where})") from None


def _registered(name: str, where: str) -> None:
    from mlflow.exceptions import MlflowException

    from salt_exp.tracking import client

    try:
        model = client().get_registered_model(name)
    except MlflowException:
        raise SaltError(f"models:/{name}: no registered model {name!r} in {where}") from None
    return model


def _first_line(exc: BaseException) -> str:
    return one_line(exc).split(". ")[0][:200]


def load_salt_model(uri: str) -> tuple[Any, Any]:
    """(pyfunc model, its salt-exp python model: ``SnapshotModel`` or ``EnsembleModel``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_model_uri(uri)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()  # MLflow resolves models:/ and runs:/ in the project's store
    try:
        with warnings.catch_warnings():  # "add type hints to predict": the signature is explicit, hints would replace it
            warnings.simplefilter("ignore", UserWarning)
            model = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise SaltError(f"{uri}: {_first_line(exc)}") from None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    try:
        inner = model.unwrap_python_model()
    except MlflowException:
        inner = None
    if not hasattr(inner, "predictor"):
        raise SaltError(f"{uri}: not a salt-exp snapshot or ensemble model (no salt-exp predictor in it)")
    return model, inner


def read_images_folder(folder: str | Path) -> Tiles:
    """Every ``*.png`` of ``folder`` (ids: the file names), each a 101 x 101 grayscale tile."""
    from salt_exp.data.pngio import TileProblem, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise SaltError(f"--images {folder}: not a folder")
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise SaltError(f"--images {folder}: no .png tiles in it")
    try:
        images = np.stack([read_image(p) for p in paths])
    except TileProblem as exc:
        raise SaltError(str(exc)) from None
    return Tiles([p.stem for p in paths], images, None, None)


def read_data_folder(root: str | Path) -> Tiles:
    """The test tiles of a Kaggle-layout folder, with their depths and mosaics.csv positions where it has them."""
    from salt_exp.data.kaggle import load_test_tiles

    test, mosaics = load_test_tiles(root)
    ids = test.ids.tolist()
    depths = None if np.isnan(test.depths).all() else test.depths
    positions = None
    if mosaics is not None:
        where = {str(r.id): (int(r.mosaic_id), int(r.x), int(r.y)) for r in mosaics.itertuples()}
        positions = [where.get(i) for i in ids]
    return Tiles(ids, test.images, depths, positions)


def _progress(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="tile", file=sys.stderr, mininterval=1.0, disable=None)


def run_predict(inner: Any, tiles: Tiles, *, probs: bool = False, device: str = "auto") -> np.ndarray:
    """(N, 101, 101) of the salt-exp model ``inner`` (from :func:`load_salt_model`): uint8 0/1 masks, or float32
    probabilities with ``probs``."""
    predictor = inner.predictor
    for m in getattr(predictor, "members", [predictor]):
        m.device = device
    n_members = len(getattr(predictor, "members", [predictor]))
    with _progress(n_members * len(tiles.ids), f"predict ({n_members} snapshot{'s' * (n_members > 1)})") as bar:
        if hasattr(predictor, "groups"):
            return predictor.predict(tiles.images, ids=tiles.ids, depths=tiles.depths, positions=tiles.positions,
                                     probs=probs, progress=bar.update)
        from salt_exp.serving.predictor import call_context, mosaic_frame

        context = call_context(tiles.images, tiles.ids, mosaic_frame(None, tiles.ids, tiles.positions))
        p = predictor.probs(tiles.images, tiles.depths, progress=bar.update, context=context)
    return p if probs else (p > float(inner.meta.get("threshold", 0.5))).astype(np.uint8)


def check_output(out: str | Path, *, probs: bool) -> None:
    """Refuse an output that cannot be written before anything is predicted."""
    out = Path(out)
    if out.suffix == ".csv" and probs:
        raise SaltError(f"--out {out}: a submission holds masks; use a folder or an .npz for --probs")
    if out.suffix not in (".csv", ".npz") and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SaltError(f"--out {out}: exists and is not an empty folder; name a new folder, a .csv or an .npz")


def write_output(out: str | Path, ids: list[str], arrays: np.ndarray, *, probs: bool) -> str:
    """``.csv``: a Kaggle submission; ``.npz``: ids + arrays; else a folder of PNGs (masks as train/masks,
    probabilities as 8-bit grey 0-255). Written to a temporary path, then renamed: never half a result."""
    check_output(out, probs=probs)
    out = Path(out)
    if out.suffix == ".csv":
        from salt_exp.ensemble.build import write_submission

        write_submission(out, ids, arrays)
        return f"submission {out} ({len(ids)} tiles)"
    if out.suffix == ".npz":
        from salt_exp.io import atomic_path

        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, ids=np.array(ids, dtype=str), **({"probs": arrays} if probs else {"masks": arrays}))
        return f"{'probabilities' if probs else 'masks'} {out} ({len(ids)} tiles)"
    from salt_exp.data.pngio import write_mask

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        import cv2

        for tile_id, a in zip(ids, arrays, strict=True):
            if probs:
                if not cv2.imwrite(str(tmp / f"{tile_id}.png"), np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)):
                    raise OSError(f"{tmp / tile_id}.png: could not write PNG")
            else:
                write_mask(tmp / f"{tile_id}.png", a)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"{len(ids)} {'probability maps' if probs else 'masks'} in {out}/"


def cmd_predict(args: Any) -> int:
    if bool(args.images) == bool(args.data):
        raise SaltError("predict: give exactly one of --images DIR (PNG tiles) or --data DIR (Kaggle layout, test/images)")
    check_output(args.out, probs=args.probs)
    _, inner = load_salt_model(args.model_uri)  # an unknown model, version or alias before any tile is read
    tiles = read_images_folder(args.images) if args.images else read_data_folder(args.data)
    arrays = run_predict(inner, tiles, probs=args.probs, device=args.device)
    print(f"{args.model_uri}: {write_output(args.out, tiles.ids, arrays, probs=args.probs)}")
    return 0


def serve_command(uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
            "--host", host, "--port", str(port)]


def cmd_serve(args: Any) -> int:
    uri = args.model_uri or (f"models:/{C.ensemble_model(args.study)}@{C.CHAMPION}" if args.study else None)
    if uri is None:
        raise SaltError("serve: give a MODEL_URI or --study NAME (serves models:/salt-<NAME>-ensemble@champion)")
    check_model_uri(uri)
    # mlflow starts `uvicorn` by name: the environment's bin folder first, also when it was never activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "PATH": path}
    cmd = serve_command(uri, args.host, args.port)
    print(f"serving {uri} on http://{args.host}:{args.port}/invocations  (POST {{\"inputs\": N x 101 x 101 tiles 0-255, "
          "\"params\": {\"ids\": [...]}}; GET /ping)", flush=True)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("predict", help="apply a registered model (models:/name@alias, models:/name/version, runs:/...) "
                       "to tiles: a Kaggle submission, mask PNGs or an .npz")
    p.add_argument("model_uri", metavar="MODEL_URI")
    p.add_argument("--images", help="a folder of 101x101 PNG tiles (ids: the file names)")
    p.add_argument("--data", help="a Kaggle-layout folder: its test/images, depths.csv and mosaics.csv")
    p.add_argument("--out", required=True, help="submission.csv | masks_dir | arrays.npz")
    p.add_argument("--probs", action="store_true", help="salt probabilities instead of masks (a folder or .npz)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve a registered model over HTTP (mlflow models serve on the project's store)")
    p.add_argument("model_uri", metavar="MODEL_URI", nargs="?", help="default: the --study's champion ensemble")
    p.add_argument("--study", help="serve models:/salt-<study>-ensemble@champion")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--print-command", action="store_true", help="print the mlflow command instead of running it")
    p.set_defaults(func=cmd_serve)
