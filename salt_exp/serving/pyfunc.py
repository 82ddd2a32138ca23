"""The MLflow pyfunc wrappers: a cycle snapshot and an ensemble as ``mlflow.pyfunc.PythonModel``.

Why pyfunc and not the pytorch flavour: the pytorch flavour pickles the whole ``nn.Module`` (loading
it unpickles code from the store) and returns raw logits of the padded input; the pyfunc wrapper
stores the plain state_dict checkpoint (read with ``weights_only=True``) and returns what a user
wants: (N, 101, 101) salt probabilities with the snapshot's own TTA, or the ensemble's masks after its
threshold and mosaic rules. Models are saved "from code" (``snapshot_model.py`` / ``ensemble_model.py``
beside the MLmodel file), so nothing of the model is cloudpickled either.

Input: (N, 101, 101) float32 tiles on the PNG's 0-255 scale (MLflow checks a tensor signature's dtype
exactly, so uint8 arrays are passed as ``tiles.astype("float32")``; JSON requests are cast by the
server). Per-tile extras travel as params: ``ids``, ``depths``, ``mosaic_id`` / ``mosaic_x`` /
``mosaic_y`` (the mosaic rules), ``probs`` (probabilities instead of masks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a hard requirement; this only keeps the module importable
    PythonModel = object  # type: ignore[assignment,misc]

from salt_exp.serving.predictor import KNOWN_FILE, MOSAICS_FILE, SPEC_FILE, EnsemblePredictor, SnapshotPredictor
from salt_exp.serving.tiles import as_list, as_tiles

WEIGHTS_ARTIFACT = "weights"  # a snapshot model's checkpoint
SPEC_ARTIFACT, KNOWN_ARTIFACT, MOSAICS_ARTIFACT = "ensemble", "known_tiles", "mosaics"
MEMBER_PREFIX = "member_"  # an ensemble model's member checkpoints: member_0, member_1, ...


def signature(kind: str) -> Any:
    """The model signature of a ``snapshot`` or an ``ensemble`` (the UI shows it on the model page)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    tiles = Schema([TensorSpec(np.dtype(np.float32), (-1, 101, 101), name=None)])
    params = [ParamSpec("depths", "double", [], shape=(-1,))]
    if kind == "snapshot":
        params.append(ParamSpec("masks", "boolean", False))  # masks at the snapshot's validation threshold
        out = Schema([TensorSpec(np.dtype(np.float32), (-1, 101, 101))])
    else:
        params += [ParamSpec("ids", "string", [], shape=(-1,)), ParamSpec("mosaic_id", "long", [], shape=(-1,)),
                   ParamSpec("mosaic_x", "long", [], shape=(-1,)), ParamSpec("mosaic_y", "long", [], shape=(-1,)),
                   ParamSpec("probs", "boolean", False)]
        out = Schema([TensorSpec(np.dtype(np.uint8), (-1, 101, 101))])
    return ModelSignature(inputs=tiles, outputs=out, params=ParamSchema(params))


def _depths(params: dict, n: int) -> np.ndarray | None:
    d = as_list(params.get("depths"), n, "depths", float)
    return None if d is None else np.asarray(d, np.float32)


def positions(params: dict, n: int) -> list[tuple[int, int, int]] | None:
    parts = [as_list(params.get(k), n, k, int) for k in ("mosaic_id", "mosaic_x", "mosaic_y")]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        from salt_exp.errors import SaltError

        raise SaltError("params: mosaic_id, mosaic_x and mosaic_y go together (one value each per tile)")
    return list(zip(*parts, strict=True))


def _as_mlflow_error(fn):
    """A SaltError from bad input becomes MLflow's invalid-parameter error: the scoring server answers 400
    with the one-line reason instead of 500 with a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from salt_exp.errors import SaltError

        try:
            return fn(*args, **kwargs)
        except SaltError as exc:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc

    return wrapped


class SnapshotModel(PythonModel):
    """One registered cycle snapshot: (N, 101, 101) probabilities, or masks at its validation threshold."""

    def load_context(self, context: Any) -> None:
        import json
        from pathlib import Path

        meta_path = context.artifacts.get("meta")
        self.meta = json.loads(Path(meta_path).read_text()) if meta_path else {}
        self.predictor = SnapshotPredictor(context.artifacts[WEIGHTS_ARTIFACT], self.meta.get("label", "snapshot"),
                                           keep_loaded=True)

    @_as_mlflow_error
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads hints as a schema
        params = params or {}
        tiles = as_tiles(model_input)
        probs = self.predictor.probs(tiles, _depths(params, len(tiles)))
        if params.get("masks"):
            return (probs > float(self.meta.get("threshold", 0.5))).astype(np.uint8)
        return probs


class EnsembleModel(PythonModel):
    """The registered ensemble: masks after its threshold and rules (``probs``: the mean probabilities)."""

    def load_context(self, context: Any) -> None:
        a = context.artifacts
        files = {k: a[k] for k in a if k.startswith(MEMBER_PREFIX)}
        self.predictor = EnsemblePredictor.from_context(a[SPEC_ARTIFACT], files, known=a.get(KNOWN_ARTIFACT),
                                                        mosaics=a.get(MOSAICS_ARTIFACT))

    @_as_mlflow_error
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads hints as a schema
        params = params or {}
        tiles = as_tiles(model_input)
        ids = as_list(params.get("ids"), len(tiles), "ids", str)
        pos = positions(params, len(tiles))
        if pos is not None and ids is None:
            from salt_exp.errors import SaltError

            raise SaltError("params: mosaic positions need the tiles' ids (params.ids)")
        return self.predictor.predict(tiles, ids=ids, depths=_depths(params, len(tiles)), positions=pos,
                                      probs=bool(params.get("probs")))


__all__ = ["KNOWN_FILE", "MOSAICS_FILE", "SPEC_FILE", "EnsembleModel", "SnapshotModel", "signature"]
