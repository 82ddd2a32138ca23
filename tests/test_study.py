"""Optuna studies end to end: real journal/PostgreSQL storage, real MLflow store, tiny synthetic set."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.errors import SaltError
from salt_exp.study.driver import StudyRequest, run_study
from salt_exp.study.report import format_report, study_report
from salt_exp.study.spec import load_study_spec
from salt_exp.study.storage import default_storage_url, open_storage
from tests.reliability import reliability

REPO = Path(__file__).resolve().parents[1]
TINY_SET = {"model.decoder_channels": [8, 8, 8, 8, 8], "optim.batch_size": 4, "train.max_train_batches": 1,
            "lr_find.enabled": False, "optim.lr": 0.01, "schedule.cycles": 1, "schedule.cycle_epochs": 1}
SPACE = {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def write_study(tmp: Path, name: str, synth: Path, **fields) -> Path:
    body = {"base": str(REPO / "configs" / "tiny.yaml"),
            "set": {"data.root": str(synth), **TINY_SET, **fields.pop("set", {})},
            "space": SPACE, "n_trials": 2, "folds": [0], "sampler": {"type": "random", "seed": 3}, "pruner": "none",
            **fields}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def trials_of(name: str, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage or default_storage_url(name)))
    return study.get_trials()


def runs_of(c: MlflowClient, study: str, role: str) -> list:
    exp = c.get_experiment_by_name(f"salt/{study}")
    return c.search_runs([exp.experiment_id], f"tags.`salt.role` = '{role}'", max_results=1000)


def check_one_parent_per_trial(c: MlflowClient, study: str, n_folds: int) -> dict[int, object]:
    """One parent run per MLflow trial number, each COMPLETE one with its n_folds fold runs nested under it."""
    parents = runs_of(c, study, "trial")
    by_trial = {int(r.data.tags["salt.trial"]): r for r in parents}
    assert len(by_trial) == len(parents), "a trial number has two parent runs"
    folds = runs_of(c, study, "fold")
    for number, parent in by_trial.items():
        children = [f for f in folds if f.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert all(f.data.tags["salt.trial"] == str(number) for f in children)
        if parent.data.tags["salt.status"] == "COMPLETE":
            assert sorted(int(f.data.tags["salt.fold"]) for f in children) == list(range(n_folds))
            maps = [parent.data.metrics[f"fold{k}_map"] for k in range(n_folds)]
            assert parent.data.metrics["cv_map"] == pytest.approx(sum(maps) / n_folds)
            assert parent.info.status == "FINISHED"
    assert all(f.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents} for f in folds)
    return by_trial


def test_study_runs_trials_as_parent_runs_and_records_a_failing_trial(synth_dir, mlflow_store, tmp_path, capsys):
    space = {**SPACE, "model.encoder": {"type": "categorical", "choices": ["timm/resnet10t", "timm/no_such_net"]}}
    enqueue = [{"optim.lr": 0.01, "model.encoder": "timm/resnet10t"},
               {"optim.lr": 0.01, "model.encoder": "timm/no_such_net"},  # fails inside training
               {"optim.lr": 0.02, "model.encoder": "timm/resnet10t"}]
    path = write_study(tmp_path, "e2e", synth_dir, space=space, enqueue=enqueue, n_trials=3, folds=[0, 1],
                       ensemble={"top_cycles": 1, "report": True})
    assert run_study(StudyRequest(spec_path=str(path))) == [0]
    trials = trials_of("e2e")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "no_such_net" in trials[1].user_attrs["salt.failure"]
    c = MlflowClient(mlflow_store)
    parents = check_one_parent_per_trial(c, "e2e", n_folds=2)
    assert sorted(parents) == [0, 1, 2]
    for t in (trials[0], trials[2]):
        assert parents[t.number].data.metrics["cv_map"] == pytest.approx(t.value)
        assert parents[t.number].data.params["optim.lr"] == str(t.params["optim.lr"])
        assert parents[t.number].data.tags["salt.study"] == "e2e" and float(parents[t.number].data.tags["salt.duration_s"]) > 0
    failed = parents[1]
    assert failed.info.status == "FAILED" and failed.data.tags["salt.status"] == "FAIL"
    assert "no_such_net" in failed.data.tags["salt.failure"]
    report = study_report("e2e", None)
    assert report["best"]["number"] in (0, 2) and report["trials"][1]["state"] == "FAIL"
    text = format_report(report)
    assert "FAIL" in text and "best: trial" in text and "fold1" in text
    last = report["trials"][0]["last_report"]  # each epoch reported to the pruner; the last one shown
    assert last is not None and f"{last[1]:.4f}@{last[0]}" in text
    # the README's main command path: `salt-exp study` (all trials done: nothing reruns) -> ensemble -> visuals
    capsys.readouterr()
    assert main(["study", str(path)]) == 0
    assert len(trials_of("e2e")) == 3
    champion = c.get_model_version_by_alias("salt-e2e-ensemble", "champion").tags["ensemble_run"]
    logged = {f.path for folder in ("viz", "report") for f in c.list_artifacts(champion, folder)}
    assert any(p.endswith(".gif") for p in logged) and any(p.startswith("viz/mosaic_") for p in logged)
    assert "report/report.html" in logged and "wrote reports/e2e/report.html" in capsys.readouterr().out


def _bad(fields: dict, needle: str, case: str | None = None):
    """A study-file mistake; ``case``: its row in the bad-input matrix (the others have theirs in test_study_spec)."""
    marks = reliability("bad-input", "study file", case, f"one-line SaltError naming the file and {needle!r}") \
        if case else ()
    return pytest.param(fields, needle, marks=marks, id=case or needle)


BAD_FILES = [
    _bad({"sapce": SPACE}, "unknown key 'sapce'; valid keys at top level: base, set, space", "misspelled top-level key"),
    _bad({"space": {"optim.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "space.optim.lrr",
         "space key that is not a config key"),
    _bad({"space": {"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}}, "space.optim.lr.type",
         "unknown space type"),
    _bad({"space": {"optim.lr": {"type": "float", "low": 0.1}}}, "space.optim.lr.high", "float space without high"),
    _bad({"space": {"padding.mode": {"type": "categorical", "choices": ["replicate", "mirror"]}}}, "space.padding.mode",
         "categorical choice the config refuses"),
    _bad({"enqueue": [{"optim.momentum": 0.5}]}, "enqueue[0].optim.momentum"),
    _bad({"sampler": {"type": "cmaes"}}, "sampler.type"),
    _bad({"pruner": {"type": "median", "patience": 3}}, "pruner.patience"),
    _bad({"folds": [0, 7]}, "'folds'", "fold out of range"),
    _bad({"set": {"optim.nme": "sgd"}}, "optim.nme", "unknown config key in set"),
    _bad({"ensemble": {"report": "yes"}}, "ensemble.report", "wrong type: ensemble report"),
    _bad({"ensemble": {"reprot": True}}, "reprot"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD_FILES)
def test_invalid_study_files_fail_in_one_line_naming_the_key(synth_dir, tmp_path, fields, needle):
    path = write_study(tmp_path, "bad", synth_dir, **fields)
    with pytest.raises(SaltError) as err:
        load_study_spec(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and needle in message, message


def test_shipped_studies_load(synth_dir):
    for path in sorted((REPO / "studies").glob("*.yaml")):
        spec = load_study_spec(path, [f"data.root={synth_dir}"])
        assert spec.name == path.stem and spec.space


def _driver(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "salt_exp.cli", "study", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@reliability("fault", "study", "SIGKILL of the study driver mid-trial (a fold run's first epoch saved)",
             "rerun of the same `salt-exp study`: the killed trial FAIL, resumed as one COMPLETE trial with its params "
             "and MLflow trial number; one trial run, one run per fold, each snapshot registered once")
def test_sigkill_mid_trial_then_rerun_resumes_without_duplicates(synth_dir, mlflow_store, tmp_path):
    path = write_study(tmp_path, "kill", synth_dir, n_trials=1, folds=[0, 1],
                       set={"schedule.cycle_epochs": 2, "train.max_train_batches": 2})
    proc = _driver([str(path)], tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "work").glob("*/last.pt")):
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed: " + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in trials_of("kill")] == ["RUNNING"]
    _finish(_driver([str(path)], tmp_path))
    trials = trials_of("kill")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["salt.resume_of"] == 0 and trials[1].user_attrs["salt.trial"] == 0
    assert trials[1].params == trials[0].params
    c = MlflowClient(mlflow_store)
    parents = check_one_parent_per_trial(c, "kill", n_folds=2)
    assert list(parents) == [0] and parents[0].data.metrics["cv_map"] == pytest.approx(trials[1].value)
    folds = runs_of(c, "kill", "fold")
    assert len(folds) == 2 and {f.info.status for f in folds} == {"FINISHED"}, "a fold run was started twice"
    versions = c.search_model_versions("name='salt-kill'")
    assert sorted((v.tags["fold"], v.tags["cycle"]) for v in versions) == [("0", "0"), ("1", "0")]
    assert study_report("kill", None)["trials"][0]["state"] == "RESUMED->1"


@pytest.mark.slow
def test_two_workers_on_one_machine_share_the_study(synth_dir, mlflow_store, tmp_path):
    path = write_study(tmp_path, "duo", synth_dir, n_trials=2)
    out = _finish(_driver([str(path), "--workers", "2", "--gpus", "0,1"], tmp_path))
    assert "local server at http://127.0.0.1:" in out and "worker 0: cuda 0, worker 1: cuda 1" in out
    trials = trials_of("duo")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], out[-3000:]
    assert len({t.user_attrs["salt.worker"] for t in trials}) == 2, "each worker should have run one trial"
    # each worker saw its own GPU only (CPU here: the environment each worker got is what is checked)
    assert sorted(t.user_attrs["salt.cuda_visible_devices"] for t in trials) == ["0", "1"]
    parents = check_one_parent_per_trial(MlflowClient(mlflow_store), "duo", n_folds=1)
    assert sorted(parents) == [0, 1]


# ---------------------------------------------------------------- PostgreSQL (several machines)


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free port (as user postgres when running as root); yields its URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2-binary is not installed")
    from salt_exp.study.server import free_port

    root = Path(tempfile.mkdtemp(prefix="salt-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as a non-root user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        for db in ("optuna", "mlflow"):
            subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db],
                           check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"  # SQLAlchemy 2.1 defaults to psycopg 3
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study(synth_dir, postgres, tmp_path, monkeypatch):
    """Two drivers (as on two machines) against Optuna on PostgreSQL and MLflow on PostgreSQL."""
    mlflow_uri, storage = f"{postgres}/mlflow", f"{postgres}/optuna"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("SALT_EXP_WORK", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    c = MlflowClient(mlflow_uri)
    c.search_experiments()  # create the MLflow schema once, before two processes race to migrate it
    path = write_study(tmp_path, "pg", synth_dir, n_trials=2)
    drivers = [_driver([str(path), "--storage", storage], tmp_path) for _ in range(2)]
    outs = [_finish(d) for d in drivers]
    trials = trials_of("pg", storage)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], outs[0][-2000:] + outs[1][-2000:]
    parents = check_one_parent_per_trial(c, "pg", n_folds=1)
    assert sorted(parents) == [0, 1]


def test_budgeted_trials_report_at_tenths_of_the_budget_for_the_pruner():
    """Budgeted fold runs differ in epochs, so they report the best val_map so far at every tenth of their
    budget (step fold_index * 10 + tenth); unbudgeted ones each epoch at fold_index * epochs + epoch."""
    from salt_exp.study.trial import PruningHook
    from salt_exp.train.hooks import EpochEnd

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    hook = PruningHook(trial, fold_index=1, epochs=5)
    for epoch, (share, value) in enumerate([(0.25, 0.4), (0.55, 0.3), (1.02, 0.6)]):
        hook.on_epoch(EpochEnd(epoch, {"val_map": value, "budget_share": share}))
    steps = trial.storage.get_trial(trial._trial_id).intermediate_values
    assert steps == {11: 0.4, 12: 0.4, 13: 0.4, 14: 0.4, 15: 0.4, 16: 0.6, 17: 0.6, 18: 0.6, 19: 0.6, 20: 0.6}
    plain = study.ask()
    PruningHook(plain, fold_index=1, epochs=5).on_epoch(EpochEnd(2, {"val_map": 0.5}))
    assert plain.storage.get_trial(plain._trial_id).intermediate_values == {7: 0.5}
