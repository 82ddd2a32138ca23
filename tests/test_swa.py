"""SWA snapshots (`salt-exp swa`): a fold run's cycle snapshots averaged, BatchNorm recalibrated, registered."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from salt_exp import contract as C
from salt_exp.cli import main
from salt_exp.contract import RunSummary, SnapshotVersion
from salt_exp.data.padding import TileAdapter
from salt_exp.ensemble.swa import average_state_dicts, bn_batches, choose_members, recalibrate_bn
from salt_exp.ensemble.swa_runs import best_group
from salt_exp.errors import SaltError
from salt_exp.models.unet import SaltOutput
from tests.test_train_run import CONFIGS, FAST, TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- pure parts


class _Tiny(nn.Module):
    """conv -> BatchNorm -> 1x1 head, returning the project's SaltOutput (what forward_cropped expects)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.3)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> SaltOutput:
        return SaltOutput(fused=self.head(torch.relu(self.bn(self.conv(x)))))


def test_average_state_dicts_means_the_floats_and_keeps_the_last_integers():
    torch.manual_seed(0)
    nets = [_Tiny() for _ in range(3)]
    for i, net in enumerate(nets):
        net.bn.running_mean.normal_()
        net.bn.num_batches_tracked.fill_(10 * (i + 1))
    states = [n.state_dict() for n in nets]
    avg = average_state_dicts(states)
    assert set(avg) == set(states[0])
    for key, value in avg.items():
        if value.is_floating_point():
            assert value.dtype == states[0][key].dtype
            assert torch.allclose(value, sum(s[key] for s in states) / 3, atol=1e-7), key
    assert avg["bn.num_batches_tracked"].item() == 30 and avg["bn.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(SaltError, match="keys or shapes"):
        average_state_dicts([states[0], {k: v for k, v in states[1].items() if k != "head.bias"}])


def test_recalibrate_bn_is_torch_update_bn_on_the_padded_tiles():
    torch.manual_seed(1)
    model, adapter = _Tiny(), TileAdapter("resize", 32)
    batches = [{"image": torch.rand(4, 1, 101, 101) * (k + 1)} for k in range(3)]
    twin = copy.deepcopy(model)
    model.eval()
    assert recalibrate_bn(model, adapter, batches, torch.device("cpu")) == 3
    torch.optim.swa_utils.update_bn([adapter.pad(b["image"]) for b in batches], twin)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(model.bn, key).float(), getattr(twin.bn, key).float()), key
    assert model.bn.momentum == 0.3 and not model.training  # momentum and mode as they were
    assert recalibrate_bn(nn.Sequential(nn.Conv2d(1, 1, 1)), adapter, batches, torch.device("cpu")) == 0


def _snap(cycle: int, val_map: float, fold: int = 0) -> SnapshotVersion:
    return SnapshotVersion(model="m", version=str(cycle + 2), run_id="r", fold=fold, cycle=cycle, val_map=val_map,
                           weights="w", oof="o")


def test_choose_members_takes_every_cycle_or_the_top_ones_in_cycle_order():
    versions = [_snap(2, 0.6), _snap(0, 0.5), _snap(1, 0.7), _snap(C.SWA_CYCLE, 0.9)]
    assert [v.cycle for v in choose_members(versions)] == [0, 1, 2]  # the SWA version itself is never a member
    assert [v.cycle for v in choose_members(versions, top=2)] == [1, 2]
    with pytest.raises(SaltError, match="1 cycle snapshot"):
        choose_members([_snap(0, 0.5), _snap(C.SWA_CYCLE, 0.9)])
    assert _snap(C.SWA_CYCLE, 0.9).swa and not _snap(0, 0.5).swa
    assert C.snapshot_logged_name(3, C.SWA_CYCLE) == "fold3-swa" and C.snapshot_model_key(C.SWA_CYCLE) == "swa"
    assert C.snapshot_oof(C.SWA_CYCLE) == "snapshots/swa/oof.npz" and C.snapshot_logged_name(3, 1) == "fold3-cycle1"


def test_best_group_without_a_parent_run_is_the_trial_with_the_best_mean():
    def run(run_id: str, trial: str, fold: int, best: float, start: int) -> RunSummary:
        return RunSummary(run_id=run_id, experiment="salt/x", status="FINISHED", start_ms=start,
                          tags={C.Tag.TRIAL: trial, C.Tag.FOLD: str(fold), C.Tag.CONFIG_HASH: "h" + trial},
                          metrics={C.Metric.BEST_VAL_MAP: best})

    runs = [run("a0", "0", 0, 0.9, 1), run("a1", "0", 1, 0.1, 2), run("b0", "1", 0, 0.6, 3), run("b1", "1", 1, 0.6, 4)]
    key, chosen = best_group(runs)
    assert key == ("1", "h1") and {r.run_id for r in chosen} == {"b0", "b1"}


def test_bad_input_is_one_line(mlflow_store, capsys):
    assert main(["swa", "--study", "nothing-here"]) == 1
    err = capsys.readouterr().err.strip()
    assert "nothing-here" in err and len(err.splitlines()) == 1
    assert main(["swa", "--study", "nothing-here", "--top", "1"]) == 1
    assert "--top 1" in capsys.readouterr().err
    assert main(["swa", "--study", "nothing-here", "--runs", "some"]) == 1
    assert "best, all" in capsys.readouterr().err


# ---------------------------------------------------------------- a cv fold run of 3 cycles, end to end

RUN = [*TINY, *FAST, "schedule.cycles=3", "schedule.cycle_epochs=1"]


def _cv(root) -> list[str]:
    return ["cv", str(CONFIGS / "tiny.yaml"), "--folds", "0", "--study", "sw", "--set", f"data.root={root}",
            *[a for t in RUN for a in ("--set", t)]]


def _models(c: MlflowClient, exp_id: str, run_id: str) -> list:
    return c.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'")


@pytest.mark.slow
def test_swa_snapshot_of_the_best_cv_is_the_mean_of_its_cycles_registered_once(synth_dir, mlflow_store, tmp_path,
                                                                               capsys):
    from salt_exp.ensemble.predict import load_member
    from salt_exp.ensemble.select import select_members
    from salt_exp.metrics import THRESHOLD_GRID, image_scores, threshold_search
    from salt_exp.tracking import fetch_artifact, snapshot_versions
    from salt_exp.train.setup import load_fold

    assert main(_cv(synth_dir)) == 0
    c = MlflowClient(mlflow_store)
    exp_id = c.get_experiment_by_name("salt/sw").experiment_id
    cycles = sorted(snapshot_versions("salt-sw"), key=lambda v: v.cycle)
    assert [v.cycle for v in cycles] == [0, 1, 2]
    run_id = cycles[0].run_id
    # a model a killed `salt-exp swa` left PENDING: marked FAILED and logged again
    c.create_logged_model(exp_id, name="fold0-swa", source_run_id=run_id, tags={C.Tag.MODEL_KEY: "swa"})
    capsys.readouterr()
    assert main(["swa", "--study", "sw", "--bn-batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "cv run" in out and "fold 0" in out and "swa of cycles 0,1,2" in out and "vs best cycle" in out, out

    (swa,) = [v for v in snapshot_versions("salt-sw") if v.swa]
    assert swa.run_id == run_id and swa.cycle == C.SWA_CYCLE and swa.fold == 0 and swa.epoch == cycles[-1].epoch
    assert c.get_run(run_id).info.status == "FINISHED"  # the fold run as it was
    cache = tmp_path / "dl"
    _check_weights(swa, cycles, synth_dir, cache)

    # (b) its OOF: the fold's validation ids; its val_map and threshold recomputed from it
    cfg = load_member(swa, cache)[2]
    fd = load_fold(cfg, 0)
    ids, probs = C.read_snapshot_oof(fetch_artifact(run_id, swa.oof, cache))
    assert ids.astype(str).tolist() == fd.val_ids.astype(str).tolist()
    truth = fd.val_masks
    assert swa.val_map == pytest.approx(image_scores(probs > 0.5, truth).mean(), abs=1e-6)
    assert swa.val_best_thr == pytest.approx(threshold_search(probs.astype(np.float32), truth, THRESHOLD_GRID)[0])
    files = {f.path for f in c.list_artifacts(run_id, "snapshots/swa")}
    assert files == {f"snapshots/swa/{n}" for n in ("oof.npz", "coverage_bins.json", "coverage_bins.png")}
    models = _models(c, exp_id, run_id)
    by_status = sorted((m.name, str(getattr(m.status, "name", m.status))) for m in models if m.name == "fold0-swa")
    assert by_status == [("fold0-swa", "FAILED"), ("fold0-swa", "READY")]
    assert c.get_run(run_id).data.metrics[C.SWAMetric.VAL_MAP] == pytest.approx(swa.val_map, abs=1e-6)

    # (c) a second call changes nothing
    n_versions, n_models = len(c.search_model_versions("name='salt-sw'")), len(models)
    assert main(["swa", "--study", "sw", "--runs", "all"]) == 0
    assert "(made before)" in capsys.readouterr().out
    assert len(c.search_model_versions("name='salt-sw'")) == n_versions and len(_models(c, exp_id, run_id)) == n_models

    # (d) the ensemble's selection sees it like a cycle: by val_map
    chosen = select_members(["salt-sw"], 4)[0]
    assert swa.key in {m.key for m in chosen}
    (top,) = select_members(["salt-sw"], 1)[0]
    assert top.key == max([*cycles, swa], key=lambda v: (v.val_map, -int(v.version))).key


def _check_weights(swa: SnapshotVersion, cycles: list[SnapshotVersion], root, cache) -> None:
    """(a) every parameter the mean of the cycles'; the BatchNorm statistics not their mean but PyTorch's own
    ``update_bn`` over the same training batches."""
    from dataclasses import replace

    from salt_exp.ensemble.predict import load_member, member_weights
    from salt_exp.train.setup import load_fold

    def state(v: SnapshotVersion) -> dict:
        return torch.load(member_weights(v, cache), map_location="cpu", weights_only=True)["state_dict"]

    averaged, members = state(swa), [state(v) for v in cycles]
    model, adapter, cfg = load_member(swa, cache)
    for name, _ in model.named_parameters():
        assert torch.allclose(averaged[name], torch.stack([m[name] for m in members]).mean(0), atol=1e-6), name
    stats = [k for k in averaged if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.allclose(averaged[k], torch.stack([m[k] for m in members]).mean(0)) for k in stats)
    fd = load_fold(replace(cfg, data=replace(cfg.data, root=str(root))), 0)
    torch.manual_seed(cfg.seed)
    torch.optim.swa_utils.update_bn([adapter.pad(b["image"]) for b in bn_batches(cfg, fd, 3)], model)
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.allclose(averaged[key].float(), value.float(), atol=1e-5), key
