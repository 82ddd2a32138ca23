"""Registry -> ensemble -> submission on the tiny synthetic set, against a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.ensemble.select import Member, select_top
from salt_exp.errors import SaltError
from salt_exp.metrics import image_scores, threshold_search
from salt_exp.scoring import score_files
from salt_exp.train.run import run_fold
from tests.test_train_run import TINY, tiny_cfg

FAST = [*TINY, "padding.mode=resize", "padding.size=64", "schedule.cycles=2", "schedule.cycle_epochs=1"]


def _member(version: str, fold: int, val_map: float) -> Member:
    return Member(model="m", version=version, run_id="r", fold=fold, cycle=int(version), val_map=val_map,
                  val_best_thr=0.5, weights="w", oof="o", encoder="enc", trial="none")


def test_select_top_ranks_by_val_map_then_earlier_version():
    members = [_member("1", 0, 0.5), _member("2", 0, 0.7), _member("3", 0, 0.7), _member("4", 1, 0.1)]
    chosen = select_top(members, 2)
    assert [m.version for m in chosen[0]] == ["2", "3"] and [m.version for m in chosen[1]] == ["4"]
    with pytest.raises(SaltError, match="top-cycles"):
        select_top(members, 0)


def test_unknown_model_is_a_clear_error(mlflow_store, capsys):
    assert main(["ensemble", "--study", "nothing-here"]) == 1
    assert "salt-nothing-here" in capsys.readouterr().err


@pytest.mark.slow
def test_two_fold_ensemble_end_to_end(synth_dir, mlflow_store, tmp_path, capsys):
    for fold in (0, 1):
        assert run_fold(tiny_cfg(synth_dir, *FAST), fold, study="ens").result.status == "FINISHED"
    out = tmp_path / "sub.csv"
    assert main(["ensemble", "--study", "ens", "--top-cycles", "2", "--selection", "top", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OOF mAP" in printed and "submission:" in printed
    # a valid Kaggle submission for every test id, scorable against the synthetic solution
    sub = pd.read_csv(out, keep_default_na=False)
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    assert sorted(sub["id"]) == sorted(sample["id"])
    lb = score_files(out, synth_dir / "solution.csv")
    c = MlflowClient(mlflow_store)
    runs = c.search_runs([c.get_experiment_by_name("salt/ens").experiment_id], "tags.`salt.role` = 'ensemble'")
    assert len(runs) == 1
    ens = runs[0]
    assert ens.data.metrics["lb_private"] == pytest.approx(lb["private"])
    for key in ("oof_map", "oof_best_single", "fold0_threshold", "fold1_threshold", "oof_err_share_empty",
                "pp_gain_cap", "pp_gain_vertical", "pp_gain_sandwich", "pp_gain_blank"):
        assert key in ens.data.metrics, key
    # the waterfall's "snapshots" step is recomputed from the stored (one-view) member probabilities, by hand;
    # the OOF the ensemble chooses on is the members' h-flip TTA view (the test prediction's), its "tta" step
    members = json.loads(c.get_model_version_by_alias("salt-ens-ensemble", "champion").tags["members"])
    assert len(members) == 4  # 2 folds x top 2 cycles
    import mlflow

    from salt_exp.data.kaggle import load_kaggle
    from salt_exp.ensemble.predict import member_predictor
    from salt_exp.ensemble.select import registered_members

    train = load_kaggle(synth_dir).train
    fold_scores, tta_scores, single_scores = [], [], []
    snapshots = registered_members("salt-ens")
    for fold in (0, 1):
        vs = [v for v in c.search_model_versions("name='salt-ens'") if v.tags["fold"] == str(fold)]
        probs = [np.load(mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path=v.tags["oof"],
                                                             dst_path=str(tmp_path / str(v.version)))) for v in vs]
        mean = np.mean([p["probs"].astype(np.float32) for p in probs], axis=0)
        pos = train.position(probs[0]["ids"])
        truth = train.masks[pos]
        thr, _, _ = threshold_search(mean, truth, np.round(np.arange(0.2, 0.801, 0.01), 2))
        fold_scores.append(image_scores(mean > thr, truth))
        best = max(vs, key=lambda v: (float(v.tags["val_map"]), -int(v.version)))
        single = np.load(mlflow.artifacts.download_artifacts(run_id=best.run_id, artifact_path=best.tags["oof"],
                                                             dst_path=str(tmp_path / "best" / str(best.version))))
        single_scores.append(image_scores(single["probs"].astype(np.float32) > 0.5, truth))
        tta = np.mean([member_predictor(m, tmp_path / "cache").probs(train.images[pos], train.depths[pos])
                       .astype(np.float16).astype(np.float32) for m in snapshots if m.fold == fold], axis=0)
        t_thr, _, _ = threshold_search(tta, truth, np.round(np.arange(0.2, 0.801, 0.01), 2))
        assert ens.data.metrics[f"fold{fold}_threshold"] == pytest.approx(t_thr)
        tta_scores.append(image_scores(tta > t_thr, truth))
    m = ens.data.metrics
    assert m["wf_snapshots"] == pytest.approx(np.concatenate(fold_scores).mean())
    assert m["wf_single"] == pytest.approx(np.concatenate(single_scores).mean())
    assert m["oof_map"] == pytest.approx(np.concatenate(tta_scores).mean()) == pytest.approx(m["wf_tta"])
    assert m["wf_total_gain"] == pytest.approx(m["oof_map_postprocessed"] - m["wf_single"])
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=ens.info.run_id, artifact_path="waterfall.json",
                                                                dst_path=str(tmp_path / "wf"))).read_text())
    steps = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert [s["step"] for s in steps][:5] == ["single", "threshold", "snapshots", "tta", "folds"]
    chained = [s for s in steps if s["score"] is not None]
    assert chained[-1]["score"] == pytest.approx(m["oof_map_postprocessed"])
    assert sum(s["gain"] for s in chained[1:]) == pytest.approx(m["wf_total_gain"])
    assert "waterfall (out of fold" in printed and "ensemble/waterfall.png" in {
        f.path for f in c.list_artifacts(ens.info.run_id, "ensemble")}

    # visual analysis (issue 7): mosaic PNG, evolution GIF and the report, all logged into the ensemble run
    _check_visuals(c, ens.info.run_id, tmp_path, capsys)


def _check_visuals(c: MlflowClient, run_id: str, tmp_path, capsys) -> None:
    import mlflow
    from PIL import Image

    from salt_exp.viz.report import SECTIONS
    from tests.browser import dump_dom

    capsys.readouterr()
    assert main(["viz", "mosaic", "--study", "ens"]) == 0
    assert main(["viz", "evolution", "--study", "ens"]) == 0
    assert main(["report", "--study", "ens"]) == 0
    printed = capsys.readouterr().out
    logged = {f.path for folder in ("viz", "report") for f in c.list_artifacts(run_id, folder)}
    mosaics = [p for p in logged if p.startswith("viz/mosaic_") and p.endswith(".png")]
    gifs = [p for p in logged if p.startswith("viz/evolution_mosaic_") and p.endswith(".gif")]
    assert len(mosaics) == 1 and len(gifs) == 1, logged
    assert {f"report/{n}" for n in ("report.html", "coverage.png", "depth.png", "mask_types.png", "threshold.png",
                                    "worst_tiles.png", "waterfall.png")} <= logged
    get = lambda p: Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=p,  # noqa: E731
                                                             dst_path=str(tmp_path / "dl")))
    # the GIF holds exactly the improving frames its JSON lists, each better than the one before
    steps = json.loads(get(gifs[0].replace(".gif", ".json")).read_text())
    assert steps["frames_considered"] == 3  # cycles 0 and 1 of the config (folds 0+1 joined), then the ensemble
    scores = [s["mosaic_score"] for s in steps["steps"]]
    assert scores == sorted(set(scores)) and len(scores) >= 1
    with Image.open(get(gifs[0])) as gif:
        assert gif.n_frames == len(scores)
    assert f"{len(scores)} improving frames" in printed
    # the report's numbers are the ensemble's own: same OOF score after post-processing
    metrics = c.get_run(run_id).data.metrics
    assert metrics["analysis_map"] == pytest.approx(metrics["oof_map_postprocessed"])
    # the logged page, opened in headless Chromium: every section there, every embedded image decoded
    dom = dump_dom(get("report/report.html"), tmp_path)
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    n_imgs = dom.count("<img ")
    assert n_imgs == 7 and f'data-images-ok="{n_imgs}/{n_imgs}"' in dom  # the waterfall chart among them
    # one threshold curve per fold; each, at the fold's own threshold, is that fold's logged ensemble score
    # (the stored float16 probabilities may move a pixel across the threshold: one tile at most, here exact)
    from salt_exp.viz.commands import report_command

    a = report_command(study="ens", log=False).analysis
    assert [f for f, _, _ in a.fold_curves] == [0, 1]
    for fold, used, curve in a.fold_curves:
        assert used == pytest.approx(metrics[f"fold{fold}_threshold"])
        k = int(np.argmin(np.abs(a.thresholds - used)))
        assert curve[k] == pytest.approx(metrics[f"fold{fold}_oof_map"], abs=0.01)
    # a fold run's report analyses its best snapshot at 0.5: the same number as its logged snapshot_val_map
    fold_run = c.search_runs([c.get_run(run_id).info.experiment_id], "tags.`salt.role` = 'fold'")[0]
    assert main(["report", "--run", fold_run.info.run_id]) == 0
    best = max(m.value for m in c.get_metric_history(fold_run.info.run_id, "snapshot_val_map"))
    assert c.get_run(fold_run.info.run_id).data.metrics["analysis_map"] == pytest.approx(best)


class _NotATensor:
    """Pickled into a checkpoint, it must not be unpickled from the artifact store."""


def test_a_tampered_snapshot_checkpoint_is_refused_in_one_line(mlflow_store, tmp_path):
    import torch

    from salt_exp.ensemble.predict import load_member
    from salt_exp.tracking import RunTracker

    tracker = RunTracker.start("salt/tamper", "fold0", {"salt.role": "fold"})
    bad = tmp_path / "cycle0_epoch0.pt"
    torch.save({"state_dict": {}, "config": {}, "extra": _NotATensor()}, bad)
    tracker.log_artifact(bad, "snapshots/cycle_0")
    tracker.end("FINISHED")
    member = Member(model="salt-tamper", version="1", run_id=tracker.run_id, fold=0, cycle=0, val_map=0.5,
                    weights="snapshots/cycle_0/cycle0_epoch0.pt", oof="o")
    with pytest.raises(SaltError, match=r"salt-tamper/v1: .*cycle0_epoch0.pt .* is not a plain state_dict") as info:
        load_member(member, tmp_path / "cache")
    assert "\n" not in str(info.value)
