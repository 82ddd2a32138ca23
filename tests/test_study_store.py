"""The Optuna storage and the MLflow store kept in step (issue 23): a study never resumes, nor ensembles, on a
store that lacks its finished trials, or that holds trials its journal does not know, without saying so."""

from __future__ import annotations

import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.errors import SaltError
from salt_exp.pipeline import check_before_ensemble
from salt_exp.study.consistency import IGNORED_ATTR, NEW_ATTR
from salt_exp.study.driver import StudyRequest
from salt_exp.study.storage import open_storage, study_uid
from tests.reliability import reliability
from tests.test_study import write_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _study(journal) -> optuna.Study:
    return optuna.load_study(study_name="sync", storage=open_storage(str(journal)))


@pytest.mark.slow
@reliability("fault", "study and store", "a fresh MLflow store under an old journal (MLFLOW_TRACKING_URI changed)",
             "the rerun stops in one line naming both stores, the trials and --new, and runs nothing; --ignore-missing "
             "goes on and records it; --new sets the journal aside and starts a new study")
def test_a_fresh_store_under_an_old_journal_stops_in_one_line_then_new_or_ignore(synth_dir, mlflow_store, tmp_path,
                                                                                 monkeypatch, capsys):
    path, journal = write_study(tmp_path, "sync", synth_dir, n_trials=1), tmp_path / "sync.journal"
    args = ["study", str(path), "--storage", str(journal)]
    assert main(args) == 0
    first_uid = study_uid(_study(journal))
    capsys.readouterr()
    # the README's main job with MLFLOW_TRACKING_URI pointed at a new store: Optuna still says trial 0 COMPLETE
    fresh = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh)
    assert main([*args, "--n-trials", "2"]) == 1
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err.startswith("error: study sync: ")
    assert f"Optuna ({journal}) has 1 finished trial(s) (0) with no runs in {fresh}" in err and "--new" in err
    assert len(_study(journal).trials) == 1  # nothing ran

    assert main([*args, "--n-trials", "2", "--ignore-missing"]) == 0  # a deliberate choice, recorded
    study = _study(journal)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert "(0) with no runs in" in study.user_attrs[IGNORED_ATTR][0]

    assert main([*args, "--new"]) == 0  # the old journal set aside, a new study (new uid) in its place
    backups = list(tmp_path.glob("sync.journal.*.bak"))
    assert len(backups) == 1 and len(optuna.load_study(study_name="sync", storage=open_storage(str(backups[0]))).trials) == 2
    new = _study(journal)
    assert study_uid(new) != first_uid and len(new.trials) == 1 and "--new" in new.user_attrs[NEW_ATTR]


@pytest.mark.slow
@reliability("fault", "study and store", "a journal restored from a backup (the store holds trials it lacks)",
             "the rerun stops in one line naming the journal and the trials; before an ensemble, a COMPLETE trial "
             "without registered snapshots stops in one line unless --ignore-missing")
def test_a_journal_restored_from_a_backup_is_told_about_the_runs_it_lacks(synth_dir, mlflow_store, tmp_path, capsys):
    path, journal = write_study(tmp_path, "sync", synth_dir, n_trials=1), tmp_path / "sync.journal"
    args = ["study", str(path), "--storage", str(journal)]
    assert main(args) == 0
    shutil.copy(journal, tmp_path / "backup.journal")
    assert main([*args, "--n-trials", "2"]) == 0  # trial 1 runs and is logged
    shutil.copy(journal, tmp_path / "both.journal")
    shutil.copy(tmp_path / "backup.journal", journal)  # the backup knows trial 0 only
    capsys.readouterr()
    assert main([*args, "--n-trials", "3"]) == 1
    err = capsys.readouterr().err
    assert "has runs of trial(s) 1 that the Optuna storage" in err and str(journal) in err

    # before an ensemble: a COMPLETE trial whose snapshots left the registry
    shutil.copy(tmp_path / "both.journal", journal)
    request = StudyRequest(spec_path=str(path), storage=str(journal))
    check_before_ensemble("sync", request)  # in step: nothing to say
    c = MlflowClient(mlflow_store)
    for v in c.search_model_versions("name='salt-sync'"):
        if v.tags["trial"] == "0":
            c.delete_model_version("salt-sync", v.version)
    with pytest.raises(SaltError, match=r"COMPLETE trial\(s\) 0 have no registered snapshot in salt-sync"):
        check_before_ensemble("sync", request)
    check_before_ensemble("sync", StudyRequest(spec_path=str(path), storage=str(journal), ignore_missing=True))


@pytest.mark.slow
@reliability("fault", "study and store", "doctor: a version's model folder deleted, a fresh store under the journal",
             "one line per finding (the version and that its folder is gone; the trials with no runs), exit 1; "
             "\"no findings\" and exit 0 before")
def test_doctor_finds_the_mismatch_and_what_the_artifact_root_lost(synth_dir, mlflow_store, tmp_path, monkeypatch,
                                                                   capsys):
    path, journal = write_study(tmp_path, "sync", synth_dir, n_trials=1), tmp_path / "sync.journal"
    assert main(["study", str(path), "--storage", str(journal)]) == 0
    capsys.readouterr()
    doctor = ["doctor", "--study", "sync", "--storage", str(journal)]
    assert main(doctor) == 0 and "no findings" in capsys.readouterr().out
    # a snapshot's logged model deleted behind the registry's back
    c = MlflowClient(mlflow_store)
    (version,) = c.search_model_versions("name='salt-sync'")
    assert version.source.startswith("models:/m-")
    shutil.rmtree(c.get_logged_model(version.source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    assert main(doctor) == 1
    out = capsys.readouterr().out
    assert f"salt-sync/v{version.version}" in out and "is gone" in out and "1 finding(s)" in out
    # the main job's scenario: a new store under the old journal
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")
    assert main(doctor) == 1
    assert "has 1 finished trial(s) (0) with no runs in sqlite:///" in capsys.readouterr().out
