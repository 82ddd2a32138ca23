"""The fault matrix's SIGKILL points (issue 23) and a corrupt ``last.pt``: the real CLI in a subprocess, killed by
``$SALT_EXP_FAULT`` (``salt_exp.faults``) at one contract write, then the same command rerun without it. The store
it ends in must be the one an uninterrupted run of the same command and seeds leaves in another fresh store.

What "the same store" means here (:func:`fingerprint`), per ``salt/*`` experiment:

- the runs by (role, fold, trial), each key once, with MLflow status, ``salt.status``, whether ``salt.failure`` is
  set, the parent's key, params and tag keys (run and model ids replaced by their keys; ``salt.resumed_from``, which
  only a resumed run carries, left out);
- every metric key's list of steps (no step twice) and, except :data:`VOLATILE` (wall times, images/s, the
  ``system/*`` samples, which a killed process logs a different number of), every value exactly: training is
  bit-reproducible here (fp32, one thread, data order and augmentation from (seed, epoch), RNG states in
  ``last.pt``), so a killed-and-resumed run replays the very same numbers;
- each table artifact's rows (keys and values), the recursive list of the run's artifacts;
- the logged models of the run (name, status, key, the step it is an output at, its files), the registry versions
  (model, version number, run, tags) and aliases;
- nothing half-written: no ``*.tmp`` or hidden partial file anywhere under the store, the work folders and
  ``submissions/``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from salt_exp.faults import ENV
from tests.reliability import reliability
from tests.test_train_run import FAST, TINY

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny.yaml"
STUDY = "faults"
# 2 cycles x 1 epoch of 1 batch, a 3-step LR finder, one thread: ~15 s per run on an idle 2-core CPU
SETS = [*TINY, *FAST, "train.max_train_batches=1", "lr_find.steps=3", "schedule.cycle_epochs=1", "train.threads=1"]
VOLATILE = ("epoch_seconds", "train_images_per_s")  # metric keys whose values are wall-clock measurements
RESUME_TAGS = {"salt.resumed_from", "salt.resume_warning"}  # what only a resumed run says of itself: where it resumed
TIMEOUT = int(os.environ.get("SALT_EXP_TEST_TIMEOUT", "600"))  # per command: ~20x what one takes on an idle 2-core CPU


@dataclass(frozen=True)
class Store:
    """A fresh MLflow store (SQLite + artifacts), work root and working directory for the CLI's subprocesses."""

    root: Path
    synth: Path
    base: Path  # the session's shared caches (dataset cache, fold files): the same for every store
    template: Path  # an empty MLflow database of this MLflow version: its tables are made once, not per store

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def env(self, fault: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != ENV}
        env.update(MLFLOW_TRACKING_URI=self.uri, SALT_EXP_WORK=str(self.work), SALT_EXP_CACHE=str(self.base / "cache"),
                   SALT_EXP_FOLDS=str(self.base / "folds"), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
                   NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg")
        if fault:
            env[ENV] = fault
        return env

    def cli(self, args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
        db = self.root / "mlruns" / "mlflow.db"
        if not db.exists():
            db.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.template, db)
        return subprocess.run([sys.executable, "-m", "salt_exp.cli", *args], cwd=self.root, env=self.env(fault),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)

    def cv(self, fault: str | None = None) -> subprocess.CompletedProcess:
        """``salt-exp cv`` of fold 0: the command a user reruns unchanged (it continues its cv run and fold run)."""
        sets = [a for s in [f"data.root={self.synth}", *SETS] for a in ("--set", s)]
        return self.cli(["cv", str(CONFIG), "--folds", "0", "--study", STUDY, *sets], fault)

    def ensemble(self, fault: str | None = None) -> subprocess.CompletedProcess:
        return self.cli(["ensemble", "--study", STUDY], fault)

    @property
    def submission(self) -> Path:
        return self.root / "submissions" / f"{STUDY}.csv"


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def killed(proc: subprocess.CompletedProcess, point: str) -> str:
    """The command died by SIGKILL, at ``point`` (the fault's own line is its last words)."""
    assert proc.returncode == -9, f"expected SIGKILL at {point}, exit {proc.returncode}: {proc.stdout[-3000:]}"
    assert f"fault: SIGKILL at {point}" in proc.stdout, proc.stdout[-3000:]
    return proc.stdout


# ---------------------------------------------------------------- the store fingerprint


def _ids(c: MlflowClient, exp_ids: list[str]) -> tuple[dict[str, str], list]:
    """Run id -> ``role fold trial`` and logged model id -> ``model <run key> <name>``: what ids read as, so two
    stores compare."""
    runs = c.search_runs(exp_ids, max_results=1000) if exp_ids else []
    names = {r.info.run_id: " ".join(r.data.tags.get(t, "-") for t in ("salt.role", "salt.fold", "salt.trial"))
             for r in runs}
    models = c.search_logged_models(exp_ids, max_results=1000) if exp_ids else []
    names.update({m.model_id: f"model {names.get(m.source_run_id, '?')} {m.name}" for m in models})
    return names, runs


def _anon(value: object, names: dict[str, str]) -> object:
    """``value`` with every run or model id in it replaced by its key."""
    if isinstance(value, str):
        for ident, key in names.items():
            value = value.replace(ident, f"<{key}>")
        return value
    if isinstance(value, dict):
        return {_anon(k, names): _anon(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_anon(v, names) for v in value]
    return value


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _artifacts(c: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in c.list_artifacts(run_id, path):
        out += _artifacts(c, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _run_record(c: MlflowClient, run, names: dict[str, str], models: list) -> dict:
    rid, tags = run.info.run_id, run.data.tags
    metrics = {}
    for key in sorted(run.data.metrics):
        if key.startswith("system/"):
            continue
        history = sorted((m.step, m.value) for m in c.get_metric_history(rid, key))
        metrics[key] = history
    tables = {}
    for entry in json.loads(tags.get("mlflow.loggedArtifacts", "[]")):
        table = json.loads((_local(run.info.artifact_uri) / entry["path"]).read_text())
        tables[entry["path"]] = {"columns": table["columns"], "data": table["data"]}
    outputs = {o.model_id: o.step for o in (run.outputs.model_outputs if run.outputs else [])}
    mine = sorted(((m.name, str(getattr(m.status, "name", m.status)), m.tags.get("salt.model_key"),
                    outputs.get(m.model_id), tuple(_files(_local(m.artifact_location))))
                   for m in models if m.source_run_id == rid), key=str)
    return _anon({"status": run.info.status, "salt.status": tags.get("salt.status"),
                  "failure": "salt.failure" in tags, "parent": names.get(tags.get("mlflow.parentRunId", ""), None),
                  "params": dict(run.data.params), "tag_keys": sorted(set(tags) - RESUME_TAGS), "metrics": metrics, "tables": tables,
                  "artifacts": _artifacts(c, rid), "models": mine, "outputs": sorted(outputs.values()),
                  "datasets": sorted((i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs)}, names)


def fingerprint(store: Store) -> dict:
    """What the store holds (see the module docstring), ids replaced by keys so that two stores compare."""
    with pytest.MonkeyPatch.context() as mp:  # MLflow resolves some artifact URIs through the global tracking URI
        mp.setenv("MLFLOW_TRACKING_URI", store.uri)
        return _fingerprint(store)


def _fingerprint(store: Store) -> dict:
    c = MlflowClient(store.uri)
    exps = [e for e in c.search_experiments() if e.name.startswith("salt/")]
    names, runs = _ids(c, [e.experiment_id for e in exps])
    models = c.search_logged_models([e.experiment_id for e in exps], max_results=1000) if exps else []
    by_exp: dict[str, dict[str, list]] = {}
    for run in runs:
        exp = next(e.name for e in exps if e.experiment_id == run.info.experiment_id)
        by_exp.setdefault(exp, {}).setdefault(names[run.info.run_id], []).append(_run_record(c, run, names, models))
    registry = {}
    for rm in c.search_registered_models():
        versions = sorted(c.search_model_versions(f"name='{rm.name}'"), key=lambda v: int(v.version))
        registry[rm.name] = {"aliases": dict(rm.aliases),
                             "versions": [_anon({"version": v.version, "run": v.run_id, "source": v.source,
                                                 "status": v.status, "tags": dict(v.tags)}, names) for v in versions]}
    partial = [str(p.relative_to(store.root)) for p in store.root.rglob("*")
               if p.name.endswith(".tmp") or (p.name.startswith(".") and p.is_file())]
    return {"experiments": by_exp, "registry": registry, "partial_files": sorted(partial)}


def _nan_as_text(value: object) -> object:
    """NaN as ``"nan"`` (an empty bin's score): NaN != NaN would fail two equal stores."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _nan_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_as_text(v) for v in value]
    return value


def structure(fp: dict) -> dict:
    """The fingerprint with the values of :data:`VOLATILE` metrics dropped (their steps kept), NaN as text."""
    out = _nan_as_text(json.loads(json.dumps(fp)))
    for runs in out["experiments"].values():
        for records in runs.values():
            for rec in records:
                for key, history in rec["metrics"].items():
                    if key in VOLATILE:
                        rec["metrics"][key] = [step for step, _ in history]
    return out


def check_once(fp: dict) -> None:
    """Nothing twice: each run key once, no metric step twice, no registry (model, key) twice, nothing partial."""
    for exp, runs in fp["experiments"].items():
        for key, records in runs.items():
            assert len(records) == 1, f"{exp}: {len(records)} runs {key!r}"
            for metric, history in records[0]["metrics"].items():
                steps = [h[0] for h in history]
                assert len(steps) == len(set(steps)), f"{exp} {key}: {metric} steps {steps}"
    for name, reg in fp["registry"].items():
        keys = [(v["tags"].get("fold"), v["tags"].get("cycle"), v["tags"].get("ensemble_run")) for v in reg["versions"]]
        assert len(keys) == len(set(keys)), f"{name}: versions {keys}"
    assert not fp["partial_files"], fp["partial_files"]


def assert_same_store(got: dict, want: dict) -> None:
    """``got`` (killed, then rerun) is ``want`` (uninterrupted): structure exactly, then every stable value."""
    check_once(got)
    sg, sw = structure(got), structure(want)
    for exp in sorted(set(sw["experiments"]) | set(sg["experiments"])):
        g, w = sg["experiments"].get(exp, {}), sw["experiments"].get(exp, {})
        assert sorted(g) == sorted(w), f"{exp}: runs {sorted(g)} != {sorted(w)}"
        for key in w:
            for field in w[key][0]:
                assert g[key][0][field] == w[key][0][field], f"{exp} {key!r}: {field} differs"
    assert sg["registry"] == sw["registry"]
    assert sg == sw


# ---------------------------------------------------------------- the uninterrupted runs


@dataclass(frozen=True)
class Baseline:
    cv: dict  # the fingerprint after `salt-exp cv` of fold 0
    ensemble: dict  # after `salt-exp ensemble` on it
    submission: bytes


@pytest.fixture
def store(synth_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, template: Path) -> Store:
    return Store(tmp_path / "store", synth_dir, tmp_path_factory.getbasetemp(), template)


# ---------------------------------------------------------------- SIGKILL of a fold run at each contract write


def _versions(store: Store) -> list[tuple[str, str]]:
    c = MlflowClient(store.uri)
    return sorted((v.tags["fold"], v.tags["cycle"]) for v in c.search_model_versions(f"name='salt-{STUDY}'"))


def _fold_run(store: Store):
    c = MlflowClient(store.uri)
    (run,) = c.search_runs([c.get_experiment_by_name(f"salt/{STUDY}").experiment_id], "tags.`salt.role` = 'fold'")
    return c, run


def _after_epoch(store: Store) -> None:
    c, run = _fold_run(store)
    assert run.info.status == "RUNNING"  # nothing closed it
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_map")] == [0]
    assert not _versions(store) and list(store.work.glob("*/last.pt"))


def _after_bins_table(store: Store) -> None:
    c, run = _fold_run(store)
    files = {a.path for a in c.list_artifacts(run.info.run_id, "snapshots/cycle_0")}
    assert files == {"snapshots/cycle_0/coverage_bins.json"}, files  # the table, and not the OOF after it
    assert not _versions(store)


def _before_version(store: Store) -> None:
    c, run = _fold_run(store)
    assert c.get_registered_model(f"salt-{STUDY}") and not _versions(store)
    assert "snapshots/cycle_0/oof.npz" in {a.path for a in c.list_artifacts(run.info.run_id, "snapshots/cycle_0")}


def _after_last_version(store: Store) -> None:
    assert _versions(store) == [("0", "0"), ("0", "1")]
    c, run = _fold_run(store)
    assert run.info.status == "RUNNING"


FOLD_FAULTS = [
    pytest.param("fold.after_epoch_metrics@1", _after_epoch, id="after-epoch-metrics", marks=reliability(
        "fault", "fold run", "SIGKILL after an epoch's metric batch (before its cycle's snapshot is published)",
        "rerun of the same `salt-exp cv`: the same runs, metric steps and values, table rows, artifacts, logged models "
        "and registry versions as an uninterrupted run; none twice; no partial file")),
    pytest.param("snapshot.after_bins_table@1", _after_bins_table, id="between-table-and-upload", marks=reliability(
        "fault", "fold run", "SIGKILL between a snapshot's coverage-bin table and its OOF/weights upload",
        "rerun: the table holds one copy of each bin row, one oof.npz, one logged model and one version per cycle; "
        "store equals an uninterrupted run's")),
    pytest.param("registry.before_create_version@1", _before_version, id="before-create-version", marks=reliability(
        "fault", "registry", "SIGKILL during registration: registered model created, no version yet",
        "rerun registers each cycle once (versions 1, 2 as uninterrupted), from the logged model already uploaded; "
        "store equals an uninterrupted run's")),
    pytest.param("registry.after_create_version@2", _after_last_version, id="after-create-version", marks=reliability(
        "fault", "registry", "SIGKILL during registration: version created, the run has not recorded it",
        "rerun finds the version by its cycle and creates none; the last cycle's version is not duplicated; "
        "store equals an uninterrupted run's")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "check_killed"), FOLD_FAULTS)
def test_sigkill_of_a_fold_run_at_a_contract_write_then_rerun(store: Store, baseline: Baseline, fault: str,
                                                              check_killed: Callable[[Store], None]):
    """Killed at ``fault``: the store shows the write before the point and not the one after; the same command,
    rerun, continues the cv run and the fold run to exactly the uninterrupted store (metric values included, except
    wall times and images/s)."""
    killed(store.cv(fault), fault.partition("@")[0])
    check_killed(store)
    out = ok(store.cv())
    assert "trained now: [0]" in out
    assert_same_store(fingerprint(store), baseline.cv)


# ---------------------------------------------------------------- a corrupt last.pt


def _parts(width: int) -> dict:
    """A model, optimizer and scaler for ``state.save_state`` / ``load_state`` without building a UNet."""
    import torch

    model = torch.nn.Linear(width, width)
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
            "scaler": torch.amp.GradScaler("cpu", enabled=False)}


@pytest.mark.slow
@reliability("fault", "resume state", "corrupt last.pt (truncated to half; empty, random bytes, another model's)",
             "rerun exits 1 with one line `error: <path> ...` saying to move it aside, no traceback, the runs closed; "
             "after `mv last.pt last.pt.bad` the same command retrains the fold from epoch 0 in the same run and ends "
             "in the uninterrupted store")
def test_a_corrupt_last_pt_stops_in_one_line_then_retrains_from_epoch_0(store: Store, baseline: Baseline,
                                                                        tmp_path: Path):
    """Truncated through the CLI (the one line, the store after it, the way out); an empty file (a power cut after
    an unsynced rename), random bytes and another model's checkpoint through the loader itself."""
    from salt_exp.errors import SaltError
    from salt_exp.train.state import RunState, load_state, save_state

    killed(store.cv("fold.after_epoch_metrics@1"), "fold.after_epoch_metrics")
    (last,) = store.work.glob("*/last.pt")
    original = last.read_bytes()
    last.write_bytes(original[: len(original) // 2])
    proc = store.cv()
    assert proc.returncode == 1, proc.stdout[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in proc.stdout, lines[-5:]
    assert str(last) in errors[0] and f"mv {last} {last}.bad" in errors[0] and "epoch 0" in errors[0], errors[0]
    assert last.stat().st_size == len(original) // 2  # left as it was, for the user to look at
    c, run = _fold_run(store)
    assert run.info.status == "KILLED" and len(c.search_runs([run.info.experiment_id])) == 2  # closed, none added

    other = tmp_path / "other" / "last.pt"  # a checkpoint that loads, of another model
    save_state(other, RunState(), **_parts(3))
    noise = random.Random(23).randbytes(len(original))
    for data, what in ((b"", "cannot be read (EOFError"), (noise, "cannot be read"),
                       (other.read_bytes(), "does not fit this run's model")):
        last.write_bytes(data)
        p = _parts(2)
        with pytest.raises(SaltError, match=r"mv \S+ \S+\.bad") as err:
            load_state(last, p["model"], p["optimizer"], p["scaler"])
        assert str(last) in str(err.value) and what in str(err.value), str(err.value)

    last.rename(last.with_name("last.pt.bad"))
    ok(store.cv())
    assert_same_store(fingerprint(store), baseline.cv)


# ---------------------------------------------------------------- the ensemble's submission write


@pytest.mark.slow
@reliability("fault", "ensemble", "SIGKILL during the ensemble's submission write (half the rows written)",
             "no submissions/<study>.csv while killed (the rows sit in a temporary file); the rerun writes it byte for "
             "byte as an uninterrupted run, removes the dead writer's temporary file, and leaves one ensemble run "
             "and one version in a store equal to an uninterrupted run's")
def test_sigkill_during_the_submission_write_then_rerun(store: Store, baseline: Baseline):
    ok(store.cv())
    killed(store.ensemble("submission.half_written"), "submission.half_written")
    folder = store.submission.parent
    assert not store.submission.exists()  # never visible half-written
    (temp,) = [p for p in folder.iterdir()]
    assert temp.name.startswith(f".{store.submission.name}.") and temp.name.endswith(".tmp")
    header, *rows = temp.read_text().splitlines()
    assert header == "id,rle_mask" and 0 < len(rows) < baseline.submission.decode().count("\n") - 1
    c = MlflowClient(store.uri)
    exp = c.get_experiment_by_name(f"salt/{STUDY}").experiment_id
    assert not c.search_runs([exp], "tags.`salt.role` = 'ensemble'")  # the run starts after the submission
    ok(store.ensemble())
    assert store.submission.read_bytes() == baseline.submission
    assert sorted(p.name for p in folder.iterdir()) == [store.submission.name]
    assert_same_store(fingerprint(store), baseline.ensemble)


@pytest.mark.slow
@pytest.mark.parametrize("point", [
    pytest.param("registry.before_create_version", id="before-version", marks=reliability(
        "fault", "ensemble", "SIGKILL while the ensemble registers (its run and model logged, no version yet)",
        "the rerun continues the unfinished ensemble run (no second run); one READY model, one version with the "
        "champion alias; store and submission equal to an uninterrupted run's")),
    pytest.param("registry.after_create_version", id="after-version", marks=reliability(
        "fault", "ensemble", "SIGKILL right after the ensemble's version is created (before its alias)",
        "the rerun continues the unfinished run and finds its version (no second one), sets the champion alias; "
        "store and submission equal to an uninterrupted run's")),
])
def test_sigkill_while_the_ensemble_registers_then_rerun(store: Store, baseline: Baseline, point: str):
    ok(store.cv())
    killed(store.ensemble(point), point)
    c = MlflowClient(store.uri)
    exp = c.get_experiment_by_name(f"salt/{STUDY}").experiment_id
    (run,) = c.search_runs([exp], "tags.`salt.role` = 'ensemble'")
    assert run.info.status == "RUNNING"  # what a killed process leaves
    versions = c.search_model_versions(f"name='salt-{STUDY}-ensemble'")
    assert len(versions) == (1 if point == "registry.after_create_version" else 0)
    out = ok(store.ensemble())
    assert f"continuing the unfinished ensemble run {run.info.run_id}" in out
    assert store.submission.read_bytes() == baseline.submission
    assert_same_store(fingerprint(store), baseline.ensemble)


# ---------------------------------------------------------------- the machinery itself


def test_fault_point_is_a_no_op_unless_armed_and_refuses_a_malformed_value(monkeypatch: pytest.MonkeyPatch):
    from salt_exp.faults import fault_point

    monkeypatch.delenv(ENV, raising=False)
    fault_point("fold.after_epoch_metrics")  # unset: nothing happens
    monkeypatch.setenv(ENV, "registry.after_create_version@2")
    fault_point("fold.after_epoch_metrics")  # another point armed: nothing happens
    for bad in ("no.such_point", "fold.after_epoch_metrics@0", "fold.after_epoch_metrics@x"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):  # a typo must not pass as "never reached"
            fault_point("fold.after_epoch_metrics")


def test_fault_point_kills_at_its_nth_hit():
    code = ("from salt_exp.faults import fault_point\n"
            "for i in range(5):\n    print(i, flush=True)\n    fault_point('submission.half_written')\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, ENV: "submission.half_written@3",
                                                             "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and proc.stdout.split() == ["0", "1", "2"], (proc.returncode, proc.stdout)
    assert proc.stderr.strip() == "fault: SIGKILL at submission.half_written (hit 3)"


def test_an_atomic_write_removes_a_dead_writers_temporary_and_nothing_else(tmp_path: Path):
    """What a SIGKILL leaves (``.<name>.<pid>@<host>.<random>.tmp``) goes with the next write of the same file; a live
    writer's, another host's and another file's stay."""
    import socket

    from salt_exp.io import atomic_open

    gone = subprocess.Popen(["true"])
    gone.wait()
    host, dest = socket.gethostname(), tmp_path / "a.csv"
    stale = tmp_path / f".a.csv.{gone.pid}@{host}.k1.tmp"
    kept = [tmp_path / f".a.csv.{os.getpid()}@{host}.k2.tmp", tmp_path / f".a.csv.{gone.pid}@elsewhere.k3.tmp",
            tmp_path / f".a.csv.x.{gone.pid}@{host}.k4.tmp"]
    for p in (stale, *kept):
        p.write_text("half")
    with atomic_open(dest, "w") as fh:
        fh.write("id,rle_mask\n")
    assert dest.read_text() == "id,rle_mask\n"
    assert sorted(tmp_path.iterdir()) == sorted([dest, *kept])
