"""Pseudo-labelling (`salt-exp pseudo`): confidence rules, leak-free fold labels, the mixed loader, a tracked round."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from salt_exp import contract as C
from salt_exp.cli import main
from salt_exp.config import AugmentConfig, PseudoConfig, load_config
from salt_exp.data.dataset import MixedSampler
from salt_exp.data.kaggle import TileSet, load_kaggle
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.losses import IGNORE
from salt_exp.pseudo import round_study
from salt_exp.pseudo.confidence import AUDIT_LINE, DROPPED, EMPTY, NONEMPTY, audit, confidence_verdicts
from salt_exp.pseudo.labels import Labeller
from salt_exp.train.setup import load_fold, train_loader
from tests.conftest import write_kaggle
from tests.test_train_run import CONFIGS, TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RULES = PseudoConfig(empty_max_prob=0.2, pixel_low=0.1, pixel_high=0.9, min_confident_pixels=0.97)


# ---------------------------------------------------------------- pure parts


def test_confidence_rules_keep_and_drop_the_expected_tiles():
    probs = np.full((7, 101, 101), 0.05, np.float32)  # 0: confidently empty
    probs[1] = 0.15  # max below empty_max_prob: empty, although no pixel is below pixel_low
    probs[2] = 0.3  # empty at 0.5 but not confidently so: dropped
    probs[3, :, :40] = 0.95  # confident salt on the left: non-empty
    probs[4, :, :40] = 0.95
    probs[4, :6, 40:] = 0.6  # 6 x 61 of 10201 pixels (3.6%) unsure: dropped
    probs[5, :4, 40:] = 0.6  # 2.4% unsure: kept
    probs[5, :, :40] = 0.95
    probs[6, 50, 50] = 0.4  # one pixel too high for an empty tile
    masks = (probs > 0.5).astype(np.uint8)
    verdicts = confidence_verdicts(probs, masks, RULES)
    assert verdicts.tolist() == [EMPTY, EMPTY, DROPPED, NONEMPTY, DROPPED, NONEMPTY, DROPPED]
    # a mask the mosaic rules made non-empty is kept as such when the pixels are confident (the rules' label)
    grown = masks.copy()
    grown[0, :, :10] = 1
    assert confidence_verdicts(probs[:1], grown[:1], RULES).tolist() == [NONEMPTY]
    assert confidence_verdicts(probs[:1], grown[:1], replace(RULES, min_confident_pixels=1.0)).tolist() == [NONEMPTY]
    assert confidence_verdicts(probs[2:3], masks[2:3], replace(RULES, empty_max_prob=0.31)).tolist() == [EMPTY]


def test_empty_share_caps_the_empty_tiles_keeping_the_most_certain():
    probs = np.full((8, 101, 101), 0.02, np.float32)
    for i, top in enumerate((0.15, 0.05, 0.12, 0.03, 0.09, 0.18)):  # six empty tiles, each with one highest pixel
        probs[i, 7, 7] = top
    probs[6:, :, :50] = 0.97  # two confident salt tiles
    masks = (probs > 0.5).astype(np.uint8)
    assert confidence_verdicts(probs, masks, RULES).tolist() == [EMPTY] * 6 + [NONEMPTY] * 2  # no cap by default
    capped = confidence_verdicts(probs, masks, replace(RULES, empty_share=0.5))  # room for 2 empties beside 2 salt
    assert capped.tolist() == [DROPPED, EMPTY, DROPPED, EMPTY, DROPPED, DROPPED, NONEMPTY, NONEMPTY]
    three = confidence_verdicts(probs, masks, replace(RULES, empty_share=0.6))  # 0.6 / 0.4 * 2 = 3
    assert np.flatnonzero(three == EMPTY).tolist() == [1, 3, 4]
    assert (confidence_verdicts(probs, masks, replace(RULES, empty_share=0.0)) == EMPTY).sum() == 0
    assert (confidence_verdicts(probs[:6], masks[:6], replace(RULES, empty_share=0.5)) == EMPTY).sum() == 0


def test_the_labels_key_of_earlier_rounds_holds_while_later_keys_are_at_their_default():
    """Rules added later (ignore_band, empty_share) leave a round's labels key as it was while off, so a rerun of
    an earlier round finds its labels; set, they make another key."""
    from types import SimpleNamespace

    from salt_exp.pseudo.round import pseudo_key

    source = SimpleNamespace(key="salt-s-ensemble/v1")
    cfg = load_config(CONFIGS / "tiny.yaml")
    d, p = cfg.data, cfg.pseudo
    before = {"ensemble": source.key, "data": str(Path(d.root).resolve()), "folds": [d.folds_scheme, d.n_folds, d.folds_seed],
              **{k: getattr(p, k) for k in ("empty_max_prob", "pixel_low", "pixel_high", "min_confident_pixels")}}
    assert pseudo_key(source, cfg) == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    keys = {pseudo_key(source, load_config(CONFIGS / "tiny.yaml", o))
            for o in ([], ["pseudo.ignore_band=true"], ["pseudo.empty_share=0.4"], ["pseudo.empty_share=0.3"])}
    assert len(keys) == 4


def test_ignore_band_marks_the_uncertain_pixels_of_kept_salt_tiles_only(tmp_path):
    """``pseudo.ignore_band``: a kept non-empty tile's pixels inside the band are left out of the loss unless the
    mosaic rules set them; empty and dropped tiles ignore nothing; the labels file carries the map."""
    from salt_exp.pseudo.confidence import ignore_map

    rules = replace(RULES, pixel_low=0.3, pixel_high=0.7, min_confident_pixels=0.5, ignore_band=True)
    probs = np.full((3, 101, 101), 0.05, np.float32)  # 0: confidently empty
    probs[1, :, :50] = 0.95  # 1: salt on the left, an uncertain boundary band at columns 50-59
    probs[1, :, 50:60] = 0.55
    probs[1, :, 60:70] = 0.35
    probs[2] = 0.5  # 2: uncertain everywhere: dropped
    masks = (probs > 0.5).astype(np.uint8)
    masks[1, 90:, :] = 1  # the mosaic rules extended the mask downwards: their pixels are labels, not guesses
    verdicts = confidence_verdicts(probs, masks, rules)
    assert verdicts.tolist() == [EMPTY, NONEMPTY, DROPPED]
    ignore = ignore_map(probs, masks, verdicts, 0.5, rules)
    expected = np.zeros_like(ignore)
    expected[1, :90, 50:70] = True  # the band, where the mask is the model's
    expected[1, 90:, 50:60] = True  # below row 90 the rules set 1: kept where the model said 0 (columns 60-69)
    assert (ignore == expected).all()
    assert ignore_map(probs, masks, verdicts, 0.5, replace(rules, ignore_band=False)) is None
    # the labels file keeps the map (bit-packed) and a file without it reads back as ignoring nothing
    kept = verdicts != DROPPED
    fl = C.FoldPseudoLabels(fold=0, ids=np.array(["a", "b"]), masks=masks[kept], threshold=0.5, kept_empty=1,
                            kept_nonempty=1, dropped=1, ignore=ignore[kept])
    back = C.read_pseudo_labels(C.write_pseudo_labels(tmp_path / "l.npz", C.PseudoLabels(folds={0: fl}, source={})))
    assert (back.folds[0].ignore == ignore[kept]).all() and back.folds[0].ignored_pixels == int(expected.sum())
    plain = dataclasses.replace(fl, ignore=None)
    back = C.read_pseudo_labels(C.write_pseudo_labels(tmp_path / "p.npz", C.PseudoLabels(folds={0: plain}, source={})))
    assert back.folds[0].ignore is None and back.folds[0].ignored_pixels == 0


def test_ignored_pixels_travel_with_the_mask_through_tiles_and_canvases():
    """A mask with the IGNORE bit reaches the loss unchanged (plain tiles, context canvases with their validity
    plane) and moves with the mask under the canvas flip."""
    from salt_exp.data.context import hflip_canvas
    from salt_exp.data.dataset import TileDataset
    from salt_exp.data.transforms import CanvasTransform

    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (2, 101, 101), dtype=np.uint8)
    masks = np.zeros((2, 101, 101), np.uint8)
    masks[:, :, :30] = 1
    masks[1, :, 25:40] += IGNORE  # label 1 (+2) on 25-29, label 0 (+2) on 30-39
    item = TileDataset(images, masks, None, "raw")[1]
    assert (item["mask"][0].numpy() == masks[1]).all()
    with pytest.raises(ValueError, match=r"masks must be 0/1 \(\+2 on ignored pixels\), got max 4"):
        TileDataset(images, masks + 1, None, "raw")
    canvases = rng.integers(0, 255, (2, 128, 128), dtype=np.uint8)
    validity = np.zeros((2, 128, 128), np.uint8)
    validity[:, 13:114, 13:128] = 1  # the tile and its right-hand neighbour
    item = TileDataset(canvases, masks, None, "raw", validity=validity)[1]
    assert (item["mask"][0].numpy() == masks[1]).all() and (item["image"][1].numpy() == validity[1]).all()
    flip = CanvasTransform(AugmentConfig(hflip=1.0, invert=0, gamma=0, cutout=0, crop=0), seed=0, size=128)
    item = TileDataset(canvases, masks, None, "raw", validity=validity, transform=flip)[1]
    padded = np.zeros((128, 128), np.uint8)
    padded[13:114, 13:114] = masks[1]
    assert (item["mask"][0].numpy() == hflip_canvas(padded)[13:114, 13:114]).all()
    assert (item["image"][1].numpy() == hflip_canvas(validity[1], valid_plane=True)).all()


def test_pseudo_cycles_keeps_the_labels_to_the_first_cycles():
    """``pseudo.cycles``: the epochs of the first N cycles draw pseudo tiles, later ones the training tiles only."""
    from types import SimpleNamespace

    from salt_exp.train.fold_run import FoldTrainer

    def at(cycles, cycle_epochs):
        cfg = SimpleNamespace(pseudo=PseudoConfig(cycles=cycles))
        return [FoldTrainer.pseudo_at(SimpleNamespace(cfg=cfg, cycle_epochs=cycle_epochs), e) for e in range(6)]

    assert at(1, 2) == [True, True, False, False, False, False]
    assert at(2, 2) == [True] * 4 + [False] * 2
    assert at(None, 2) == [True] * 6


def test_mixed_sampler_draws_the_share_keeps_the_epoch_and_replays():
    s = MixedSampler(1000, 50, 0.3, seed=7)
    idx = s.indices()
    second = idx >= 1000
    assert len(s) == len(idx) == 1000 and abs(second.mean() - 0.3) < 0.05
    assert len(set(idx[~second].tolist())) == (~second).sum()  # a training tile at most once per pass
    assert set((idx[second] - 1000).tolist()) == set(range(50))  # whole permutations of the pseudo tiles
    assert list(s) == idx.tolist() == MixedSampler(1000, 50, 0.3, seed=7).indices().tolist()  # a pass replays
    assert idx.tolist() != MixedSampler(1000, 50, 0.3, seed=8).indices().tolist()
    assert (MixedSampler(10, 0, 0.5, seed=1).indices() < 10).all()  # no pseudo tile: training tiles only


def test_the_pseudo_config_section_is_checked_and_hashed_only_with_labels(tmp_path):
    from salt_exp.config import config_hash
    from salt_exp.errors import SaltError

    base = CONFIGS / "tiny.yaml"
    assert config_hash(load_config(base)) == config_hash(load_config(base, ["pseudo.share=0.2"]))  # unused: same runs
    with_labels = load_config(base, ["pseudo.labels=runs:/abc123/pseudo/labels.npz"])
    assert config_hash(with_labels) != config_hash(load_config(base))
    assert config_hash(with_labels) != config_hash(load_config(base, ["pseudo.labels=runs:/abc124/pseudo/labels.npz"]))
    capped = load_config(base, ["pseudo.labels=runs:/abc123/pseudo/labels.npz", "pseudo.empty_share=0.4"])
    assert config_hash(capped) != config_hash(with_labels)  # null (the default) is left out: earlier runs hash as before
    cold = load_config(base, ["pseudo.labels=runs:/abc123/pseudo/labels.npz", "pseudo.warm_start=false"])
    warm = load_config(base, ["pseudo.labels=runs:/abc123/pseudo/labels.npz", "pseudo.warm_start=true"])
    assert config_hash(cold) == config_hash(with_labels) != config_hash(warm)  # false: as before the key existed
    for bad, match in (("pseudo.shares=0.5", "unknown key 'pseudo.shares'; valid keys in 'pseudo': labels, share"),
                       ("pseudo.share=1.5", "'pseudo.share' must be >= 0.0 and <= 1.0"),
                       ("pseudo.empty_share=1", "'pseudo.empty_share' must be >= 0.0 and < 1.0"),
                       ("pseudo.pixel_low=0.95", "pseudo.pixel_low .* must be < pseudo.pixel_high"),
                       ("pseudo.labels=runs:/", "pseudo.labels: expected runs:/<run_id>/")):
        with pytest.raises(SaltError, match=match) as info:
            load_config(base, [bad])
        assert "\n" not in str(info.value)
    assert round_study("s", 0) == "s-pl1" and round_study("s-pl1", 1) == "s-pl2" and round_study("x-pl1", 0) == "x-pl1-pl1"


# ---------------------------------------------------------------- leak-free labels


class _Fixed:
    """A member whose test probabilities are given (the labeller only reads ``probs`` and ``label``; a context
    member would read ``context``, this one ignores it)."""

    label = "fixed"

    def __init__(self, probs: np.ndarray) -> None:
        self._probs = probs

    def probs(self, images, depths=None, progress=None, context=None) -> np.ndarray:
        return self._probs


class _Brightness:
    """A member that predicts each pixel's brightness as its probability (so the test decides what it sees)."""

    label = "brightness"

    def probs(self, images, depths=None, progress=None, context=None) -> np.ndarray:
        return np.asarray(images, np.float32) / 255.0


def test_the_audit_scores_the_rules_verdicts_against_the_truth():
    rules = PseudoConfig(empty_max_prob=0.4, pixel_low=0.3, pixel_high=0.7, min_confident_pixels=0.5, ignore_band=True)
    truth = np.zeros((5, 101, 101), np.uint8)
    probs = np.full((5, 101, 101), 0.05, np.float32)  # 0: empty and rightly kept empty
    truth[1, :50] = 1  # 1: salt found, 7 unsure rows of which the first 4 are salt in truth: band pixels, ignored
    probs[1, :50], probs[1, 46:53] = 0.95, 0.5
    truth[2] = 1  # 2: all salt, seen as nothing: kept empty, wrongly
    probs[2] = 0.2
    probs[3, :10] = 0.9  # 3: salt seen where there is none: kept non-empty, wrongly (10 rows wrong)
    probs[4] = 0.5  # 4: unsure everywhere: dropped (empty mask, highest probability 0.5 >= 0.4)
    masks = (probs > 0.5).astype(np.uint8)
    a = audit(probs, masks, truth, 0.5, rules)
    assert (a["tiles"], a["kept_empty"], a["kept_nonempty"]) == (5, 2, 2)
    assert (a["empty_with_salt"], a["nonempty_truly_empty"]) == (1, 1)
    # per tile: 1 (empty both), 0.9 (tile 1: IoU 46/50 = 0.92: 9 of 10 thresholds), 0, 0, 1 (dropped, empty both)
    assert a["kept_map"] == pytest.approx((1 + 0.9 + 0 + 0) / 4) and a["dropped_map"] == 1.0
    assert a["all_map"] == pytest.approx((1 + 0.9 + 0 + 0 + 1) / 5)
    band = 7 * 101  # tile 1's unsure rows: out of the loss
    assert a["pixel_error"] == pytest.approx((101 * 101 + 10 * 101) / (4 * 101 * 101 - band))
    assert a["ignored_share"] == pytest.approx(band / (2 * 101 * 101)) and a["ignored_error"] == pytest.approx(4 / 7)
    assert "2 empty (1 with salt) + 2 non-empty (1 truly empty)" in AUDIT_LINE.format(**a)
    # stricter rules keep fewer tiles; nothing kept leaves the kept shares undefined, not zero
    strict = audit(probs, masks, truth, 0.5, replace(rules, empty_max_prob=0.01, pixel_low=0.0, pixel_high=1.0))
    assert (strict["kept_empty"], strict["kept_nonempty"]) == (0, 0) and np.isnan(strict["kept_map"])
    assert np.isnan(strict["pixel_error"]) and strict["all_map"] == a["all_map"]


def test_a_folds_audit_predicts_its_validation_tiles_and_reads_their_truth_only(tmp_path):
    root = write_kaggle(tmp_path / "tgs", n=12, n_test=4)
    data = load_kaggle(root, cache=False)
    images, masks = data.train.images.copy(), np.zeros_like(data.train.masks)
    images[:] = 10  # every tile dark: the member sees no salt
    val = data.train.ids[[1, 4, 7]]
    images[4, :, :40] = 250  # bright on the left: salt seen, and true
    masks[4, :, :40] = 1
    masks[7, :, :30] = 1  # salt the member does not see: kept empty, wrongly
    masks[0] = 1  # a train tile outside the fold: its truth must not count
    train = TileSet(ids=data.train.ids, images=images, depths=data.train.depths, masks=masks)
    lab = Labeller(test=data.test, train=train, frame=None, rules=(), confidence=RULES)
    a = lab.audit_fold([_Brightness()], fold=2, threshold=0.5, hidden=val.tolist())
    assert lab.audits[2] is a and a["tiles"] == 3
    assert (a["kept_empty"], a["kept_nonempty"], a["empty_with_salt"], a["nonempty_truly_empty"]) == (2, 1, 1, 0)
    assert a["kept_map"] == pytest.approx(2 / 3) and a["pixel_error"] == pytest.approx(30 * 101 / (3 * 101 * 101))


def _vertical(width: int) -> np.ndarray:
    """A mask with a vertical boundary: the `vertical` rule carries its last row down the mosaic column."""
    mask = np.zeros((101, 101), np.uint8)
    mask[:, :width] = 1
    return mask


def test_fold_labels_never_include_train_tiles_nor_read_the_folds_validation_truth(tmp_path):
    root = write_kaggle(tmp_path / "tgs", n=12, n_test=4)  # mosaic 1: train tiles 8..11 right above test tiles 12..15
    data = load_kaggle(root, cache=False)
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data.root={root}", "data.n_folds=3"])
    tile_fold = load_fold(cfg, C.FULL_FIT).folds["fold"].to_numpy()
    index = MosaicIndex.from_frame(data.mosaics)
    above = {t: index.above(t) for t in data.test.ids.tolist()}
    assert all(a in set(data.train.ids.tolist()) for a in above.values())
    fold = next(k for k in range(3) if 0 < sum(tile_fold[data.train.position([a])[0]] == k for a in above.values()) < 4)
    val = data.train.ids[tile_fold == fold]
    masks = data.train.masks.copy()
    for j, a in enumerate(above.values()):
        masks[data.train.position([a])[0]] = _vertical(20 + 10 * j)
    probs = np.full((len(data.test.ids), 101, 101), 0.02, np.float32)
    probs[:, :, :8] = 0.98  # every test tile a confident strip of its own

    def labels(train_masks: np.ndarray, hidden: tuple[str, ...] | None = None):
        hidden = tuple(val.tolist()) if hidden is None else hidden
        lab = Labeller(test=data.test, train=dataclasses.replace(data.train, masks=train_masks), frame=data.mosaics,
                       rules=("vertical",), confidence=RULES)
        out, _ = lab.fold_labels([_Fixed(probs)], fold=fold, threshold=0.5, hidden=hidden)
        return out

    base = labels(masks)
    assert set(base.ids.tolist()) <= set(data.test.ids.tolist()) and not set(base.ids.tolist()) & set(data.train.ids.tolist())
    assert len(base.ids) == 4 and base.kept_nonempty == 4  # every strip is confident
    row = {t: i for i, t in enumerate(base.ids.tolist())}
    for t, a in above.items():  # known neighbours' truth is carried down, a validation tile's is not
        expect = masks[data.train.position([a])[0]] if a not in set(val.tolist()) else (probs[0] > 0.5)
        assert (base.masks[row[t]] == expect).all(), (t, a in set(val.tolist()))
    changed_val = masks.copy()
    changed_val[tile_fold == fold] = _vertical(77)  # other truth for every validation tile of the fold
    again = labels(changed_val)
    assert again.ids.tolist() == base.ids.tolist() and (again.masks == base.masks).all()
    # sanity: the rules do read a neighbour's truth: known, a validation tile's change would have leaked ...
    leaked = labels(changed_val, hidden=())
    assert not (leaked.masks == labels(masks, hidden=()).masks).all()
    # ... and another train tile's change does reach the labels
    other = next(a for a in above.values() if a not in set(val.tolist()))
    changed_other = masks.copy()
    changed_other[data.train.position([other])[0]] = _vertical(90)
    assert not (labels(changed_other).masks == base.masks).all()


# ---------------------------------------------------------------- a tracked round


ROUND0 = [*TINY, "padding.mode=resize", "padding.size=64", "schedule.cycles=1", "schedule.cycle_epochs=1",
          "lr_find.enabled=false", "optim.lr=0.01", "train.threads=1"]  # one thread: the machine may be shared
LOOSE = ["pseudo.empty_max_prob=1.0", "pseudo.min_confident_pixels=0.0",  # a 1-epoch model is unsure: keep every tile
         "pseudo.ignore_band=true"]  # and leave its unsure pixels out of the loss


def _sets(items: list[str]) -> list[str]:
    return [a for t in items for a in ("--set", t)]


@pytest.fixture(scope="module")
def pseudo_round(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, one_torch_thread):
    """Round 0 (a 2-fold cv of the tiny config and its ensemble), then `salt-exp pseudo`: round 1, in one store."""
    base, tmp = tmp_path_factory.getbasetemp(), tmp_path_factory.mktemp("pseudo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALT_EXP_CACHE", str(base / "cache"))
        mp.setenv("SALT_EXP_FOLDS", str(base / "folds"))
        (tmp / "mlruns").mkdir()
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("SALT_EXP_WORK", str(tmp / "work"))
        mp.chdir(tmp)
        cv = ["cv", str(CONFIGS / "tiny.yaml"), "--folds", "0-1", "--study", "pl", "--set", f"data.root={synth_dir}"]
        assert main([*cv, *_sets(ROUND0)]) == 0
        assert main(["ensemble", "--study", "pl", "--top-cycles", "1", "--out", str(tmp / "sub.csv")]) == 0
        assert main(["pseudo", "--study", "pl", "--folds", "0-1", *_sets(LOOSE)]) == 0
        yield MlflowClient(uri), tmp


def _runs(c: MlflowClient, study: str, role: str):
    exp = c.get_experiment_by_name(f"salt/{study}")
    return c.search_runs([exp.experiment_id], f"tags.`salt.role` = '{role}'") if exp else []


def test_a_round_logs_its_labels_and_lineage_and_trains_on_them(pseudo_round, synth_dir, capsys):
    import mlflow

    c, tmp = pseudo_round
    champion = c.get_model_version_by_alias("salt-pl-ensemble", "champion")
    members = json.loads(champion.tags["members"])
    (pseudo,) = _runs(c, "pl-pl1", "pseudo")
    key = f"salt-pl-ensemble/v{champion.version}"
    assert pseudo.info.status == "FINISHED" and pseudo.data.tags[C.Tag.PSEUDO_ENSEMBLE] == key
    assert pseudo.data.tags[C.Tag.PSEUDO_ROUND] == "1" and pseudo.data.tags[C.Tag.STUDY] == "pl-pl1"
    p = pseudo.data.params
    assert (p["source_model"], p["source_version"], p["source_run"]) == ("salt-pl-ensemble", str(champion.version),
                                                                          champion.tags["ensemble_run"])
    assert p["pseudo.min_confident_pixels"] == "0.0" and p["pseudo.empty_max_prob"] == "1.0"
    assert p["pseudo.ignore_band"] == "True"
    versions = {f"salt-pl/v{v.version}": v for v in c.search_model_versions("name='salt-pl'")}
    for fold in (0, 1):  # each fold's labels were made by that fold's members only
        assert p[f"fold{fold}_members"].split(",") == [m for m in members if versions[m].tags["fold"] == str(fold)]
    # the labels: downloadable, test tiles only (never a train tile, so never a validation tile), all kept here
    path = Path(mlflow.artifacts.download_artifacts(run_id=pseudo.info.run_id, artifact_path=C.PSEUDO_LABELS,
                                                    dst_path=str(tmp / "dl")))
    labels = C.read_pseudo_labels(path)
    data = load_kaggle(synth_dir)
    assert sorted(labels.folds) == [C.FULL_FIT, 0, 1] and labels.source["ensemble"] == key
    for fold, fl in labels.folds.items():
        assert sorted(fl.ids.tolist()) == sorted(data.test.ids.tolist()), fold
        assert not set(fl.ids.tolist()) & set(data.train.ids.tolist())
        m = pseudo.data.metrics
        assert (m[f"fold{C.fold_label(fold)}_kept_empty"], m[f"fold{C.fold_label(fold)}_kept_nonempty"]) == (
            fl.kept_empty, fl.kept_nonempty) and fl.dropped == 0
        # ignore_band: the unsure pixels of the salt tiles, none of an empty one's
        assert m[f"fold{C.fold_label(fold)}_ignored_pixels"] == fl.ignored_pixels > 0
        assert not fl.ignore[~fl.masks.any(axis=(1, 2))].any()
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    # the round's fold runs: nested in a cv run, naming the ensemble version and the pseudo run
    folds = {int(r.data.tags["salt.fold"]): r for r in _runs(c, "pl-pl1", "fold")}
    (cv,) = _runs(c, "pl-pl1", "cv")
    assert sorted(folds) == [0, 1] and cv.data.tags[C.Tag.PSEUDO_RUN] == pseudo.info.run_id
    for fold, run in folds.items():
        t, rp = run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and t["mlflow.parentRunId"] == cv.info.run_id
        assert (t[C.Tag.PSEUDO_ENSEMBLE], t[C.Tag.PSEUDO_RUN], t[C.Tag.PSEUDO_ROUND]) == (key, pseudo.info.run_id, "1")
        assert rp["pseudo_labels_digest"] == digest and int(rp["pseudo_tiles"]) == len(labels.folds[fold].ids)
        assert C.pseudo_labels_uri(pseudo.info.run_id) in rp["pseudo.labels"]
        inputs = {i.dataset.name: i.dataset for i in c.get_run(run.info.run_id).inputs.dataset_inputs}
        assert inputs[f"{synth_dir.name}-fold{fold}-pseudo"].digest == digest[:12]
    # what fold 0 trained on: the labels file, drawn at about pseudo.share, the same batches for the same epoch
    cfg = load_config(Path(mlflow.artifacts.download_artifacts(run_id=folds[0].info.run_id, artifact_path="config.yaml",
                                                               dst_path=str(tmp / "cfg"))))
    fd = load_fold(cfg, 0, pseudo_file=path)
    trained = labels.folds[0].masks + IGNORE * labels.folds[0].ignore  # the label and, on unsure pixels, the bit
    assert fd.pseudo.ids.tolist() == labels.folds[0].ids.tolist() and (fd.pseudo.masks == trained).all()
    assert cfg.pseudo.share == 0.5 and not np.isin(fd.pseudo.ids, fd.val_ids).any()
    full = replace(cfg, train=replace(cfg.train, max_train_batches=None))
    n_train, drawn, pseudo_drawn = len(fd.train_idx), 0, 0
    for epoch in range(12):
        index = np.concatenate([b["index"].numpy() for b in train_loader(full, fd, epoch)])
        drawn, pseudo_drawn = drawn + len(index), pseudo_drawn + int((index >= n_train).sum())
    assert len(train_loader(full, fd, 0)) == n_train // cfg.optim.batch_size  # the epoch keeps its batches
    # an epoch past pseudo.cycles: the training tiles alone, the same number of batches
    alone = np.concatenate([b["index"].numpy() for b in train_loader(full, fd, 0, pseudo=False)])
    assert (alone < n_train).all() and len(train_loader(full, fd, 0, pseudo=False)) == n_train // cfg.optim.batch_size
    assert abs(pseudo_drawn / drawn - 0.5) < 0.1, (pseudo_drawn, drawn)
    plain = replace(full, augment=AugmentConfig(hflip=0, invert=0, gamma=0, cutout=0, crop=0))
    first = [(b["index"].numpy(), b["mask"].numpy()) for b in train_loader(plain, fd, 3)]
    again = [b["index"].numpy() for b in train_loader(plain, fd, 3)]
    assert all((a == i).all() for (i, _), a in zip(first, again, strict=True))
    for idx, batch_masks in first:  # a pseudo tile trains with its label (and its ignored pixels)
        for k, i in enumerate(idx):
            if i >= n_train:
                assert (batch_masks[k, 0] == trained[i - n_train]).all()

    # the same command again: the labels and the fold runs are reused, nothing new is logged
    before = sorted(r.info.run_id for r in c.search_runs([c.get_experiment_by_name("salt/pl-pl1").experiment_id]))
    capsys.readouterr()
    assert main(["pseudo", "--study", "pl", "--folds", "0-1", *_sets(LOOSE)]) == 0
    out = capsys.readouterr().out
    assert f"pseudo run {pseudo.info.run_id} (reused)" in out and "none (all folds had finished)" in out
    after = sorted(r.info.run_id for r in c.search_runs([c.get_experiment_by_name("salt/pl-pl1").experiment_id]))
    assert after == before

    # rounds repeat: an ensemble of the round's snapshots is a source of round 2, named after the study it came from
    from salt_exp.pseudo.source import resolve_source

    assert main(["ensemble", "--study", "pl-pl1", "--top-cycles", "1", "--postprocess", "none",
                 "--out", str(tmp / "sub1.csv")]) == 0
    source = resolve_source("pl-pl1", "champion", tmp / "cache")
    assert source.round == 1 and round_study("pl-pl1", source.round) == "pl-pl2" and source.rules == ()


def test_the_labels_run_logs_each_folds_audit_and_audit_alone_logs_nothing(pseudo_round, capsys):
    c, _ = pseudo_round
    (pseudo,) = _runs(c, "pl-pl1", "pseudo")
    m = pseudo.data.metrics
    exp = c.get_experiment_by_name("salt/pl-pl1").experiment_id
    before = sorted(r.info.run_id for r in c.search_runs([exp]))
    capsys.readouterr()
    assert main(["pseudo", "--study", "pl", "--folds", "0-1", "--audit", *_sets(LOOSE)]) == 0
    out = capsys.readouterr().out
    for fold in (0, 1):  # LOOSE keeps every validation tile: every verdict counted, the kept ones are all of them
        a = {k: m[C.Metric.pseudo_audit(fold, k)] for k in ("tiles", "kept_empty", "kept_nonempty", "kept_map", "all_map")}
        assert a["tiles"] > 0 and a["kept_empty"] + a["kept_nonempty"] == a["tiles"] and a["kept_map"] == a["all_map"]
        assert C.Metric.pseudo_audit(fold, "dropped_map") not in m  # nothing dropped: NaN, not logged
        line = next(x for x in out.splitlines() if x.startswith(f"[pseudo] fold {fold} audit"))
        assert f"{a['tiles']:.0f} validation tiles: kept {a['kept_empty']:.0f} empty" in line
        assert f"mAP kept {a['kept_map']:.4f}" in line  # the audit alone measures what the labels run logged
    assert "nothing labelled, trained or logged" in out
    assert sorted(r.info.run_id for r in c.search_runs([exp])) == before
    capsys.readouterr()  # the default rules keep fewer of the same tiles (a 1-epoch model is unsure)
    assert main(["pseudo", "--study", "pl", "--folds", "0", "--audit"]) == 0
    strict = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[pseudo] fold 0 audit"))
    kept = re.search(r"kept (\d+) empty \(\d+ with salt\) \+ (\d+) non-empty", strict)
    assert int(kept[1]) + int(kept[2]) < m[C.Metric.pseudo_audit(0, "tiles")], strict


def _one_line_error(capsys, argv: list[str], match: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err, err


def test_bad_input_is_one_line(pseudo_round, synth_dir, capsys):
    from salt_exp.tracking import RunTracker, temp_dir

    _one_line_error(capsys, ["pseudo", "--study", "nope"], "--study nope: no such study")
    RunTracker.start("salt/noens", "a run", {}).end()
    _one_line_error(capsys, ["pseudo", "--study", "noens"], "salt-noens-ensemble has no 'champion' version")
    _one_line_error(capsys, ["pseudo", "--study", "pl", "--version", "9"], "salt-pl-ensemble has no version 9")
    _one_line_error(capsys, ["pseudo", "--study", "pl", "--folds", "2"], "has no members of fold(s) [2]")
    # a labels file that names a train tile: refused when the fold run loads it, before any run starts
    data = load_kaggle(synth_dir)
    bad = C.PseudoLabels(folds={0: C.FoldPseudoLabels(fold=0, ids=np.array([data.test.ids[0], data.train.ids[3]]),
                                                      masks=np.zeros((2, 101, 101), np.uint8), threshold=0.5,
                                                      kept_empty=2, kept_nonempty=0, dropped=0)}, source={})
    tracker = RunTracker.start("salt/bad", "labels", {})
    with temp_dir() as tmp:
        tracker.log_artifact(C.write_pseudo_labels(Path(tmp) / "labels.npz", bad), "pseudo")
    tracker.end()
    train = ["train", str(CONFIGS / "tiny.yaml"), "--fold", "0", "--study", "bad", "--set", f"data.root={synth_dir}",
             *_sets(ROUND0)]
    _one_line_error(capsys, [*train, "--set", f"pseudo.labels={C.pseudo_labels_uri(tracker.run_id)}"],
                    f"labels train tile {data.train.ids[3]}")
    _one_line_error(capsys, [*train, "--set", "pseudo.labels=runs:/0123abcd/pseudo/labels.npz"], "cannot fetch it")
    assert not _runs(MlflowClient(), "bad", "fold")


def test_a_warm_started_round_starts_each_fold_from_that_folds_best_member(pseudo_round, synth_dir, capsys):
    """pseudo.warm_start: fold k's run starts from fold k's best source member (never one that saw fold k's
    validation tiles). At a vanishing LR without momentum or decay its parameters stay where they started, so its
    snapshot's parameters are the member's; without it they are a fresh network's."""
    import torch

    from salt_exp.ensemble.predict import load_member
    from salt_exp.tracking import snapshot_versions

    c, tmp = pseudo_round
    champion = c.get_model_version_by_alias("salt-pl-ensemble", "champion")
    source = {v.key: v for v in snapshot_versions("salt-pl") if v.key in json.loads(champion.tags["members"])}
    still = ["optim.lr=1e-12", "schedule.min_lr=0", "optim.momentum=0", "optim.weight_decay=0"]

    def params(version) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in load_member(version, tmp / "cache")[0].named_parameters()}

    def moved(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    capsys.readouterr()
    for study, warm in (("pl-warm", "true"), ("pl-cold", "false")):
        argv = ["pseudo", "--study", "pl", "--folds", "0-1", "--into", study, *_sets([*LOOSE, *still])]
        assert main([*argv, "--set", f"pseudo.warm_start={warm}"]) == 0
    out = capsys.readouterr().out
    runs = {(s, int(r.data.tags["salt.fold"])): r for s in ("pl-warm", "pl-cold") for r in _runs(c, s, "fold")}
    for fold in (0, 1):
        (member,) = [v for v in source.values() if v.fold == fold]  # the fixture's ensemble: one member a fold
        rp = runs["pl-warm", fold].data.params
        assert rp["warm_start_member"] == member.key and "warm_start_member" not in runs["pl-cold", fold].data.params
        assert f"[fold {fold}] warm start from {member.key}" in out
        (warm,) = [v for v in snapshot_versions("salt-pl-warm") if v.fold == fold]
        (cold,) = [v for v in snapshot_versions("salt-pl-cold") if v.fold == fold]
        start = params(member)
        assert moved(params(warm), start) < 1e-6 < 1e-4 < moved(params(cold), start)
    # a round whose config builds another network cannot start from the member: one line, no fold run logged
    _one_line_error(capsys, ["pseudo", "--study", "pl", "--folds", "0", "--into", "pl-other",
                             *_sets([*LOOSE, "pseudo.warm_start=true", "model.decoder_channels=[16,16,8,8,8]"])],
                    "weights do not fit this run's model")
    assert not _runs(c, "pl-other", "fold")
    # without labels there is no source to start from: one line, nothing logged
    _one_line_error(capsys, ["train", str(CONFIGS / "tiny.yaml"), "--fold", "0", "--study", "nowarm", "--set",
                             f"data.root={synth_dir}", *_sets([*ROUND0, "pseudo.warm_start=true"])],
                    "pseudo.warm_start: needs pseudo.labels")
    assert not _runs(c, "nowarm", "fold")


def test_a_round_that_would_oversample_a_few_labels_is_refused_in_one_line():
    """Real data, cpu.yaml at 25 min: the default rules kept 50 empty tiles of 4861 for one fold; at share 0.5 each
    would be drawn ~48x as often as a training tile. The round stops with the numbers and what to loosen."""
    from types import SimpleNamespace

    from salt_exp.config import PseudoConfig
    from salt_exp.errors import SaltError
    from salt_exp.pseudo.confidence import calibration
    from salt_exp.pseudo.round import check_oversampling

    rules = PseudoConfig()
    few = SimpleNamespace(fold=3, ids=np.array([f"t{i}" for i in range(50)]), kept_empty=50, kept_nonempty=0)
    with pytest.raises(SaltError, match=r"^fold 3: the confidence rules kept 50 test tiles \(50 empty, 0 non-empty\) "
                       r"beside 2400 training tiles; at pseudo.share 0.5 each would be drawn 48x .* pseudo.share <= 0.077"):
        check_oversampling(few, 2400, rules)
    mixed = SimpleNamespace(fold=3, ids=few.ids, kept_empty=40, kept_nonempty=10)
    check_oversampling(mixed, 2400, PseudoConfig(share=0.07))  # within the limit: no error
    # real data, a Lovasz-trained cpu.yaml model: 3513 empty and no non-empty tile kept; the round would teach only
    # "empty", so it is refused in one line pointing at the pixel band
    with pytest.raises(SaltError, match=r"^fold 3: the confidence rules kept 50 test tiles, all empty, none non-empty.*pixel_low"):
        check_oversampling(few, 2400, PseudoConfig(share=0.07))
    many = SimpleNamespace(fold=0, ids=np.array([f"t{i}" for i in range(1200)]), kept_empty=600, kept_nonempty=600)
    check_oversampling(many, 2400, rules)  # 2x: fine
    with pytest.raises(SaltError, match="kept 0 test tiles"):
        check_oversampling(SimpleNamespace(fold=1, ids=np.array([]), kept_empty=0, kept_nonempty=0), 2400, rules)
    # the calibration counts what looser rules would keep
    probs = np.zeros((3, 101, 101), np.float32)
    probs[0] = 0.15  # empty, max 0.15
    probs[1] = 0.35  # empty, max 0.35
    probs[2, :, :60] = 0.95  # non-empty: 60/101 pixels confident salt, the rest 0 (confident empty)
    masks = (probs > 0.5).astype(np.uint8)
    cal = calibration(probs, masks, rules)
    assert cal["empty"] == {0.1: 0, 0.2: 1, 0.3: 1, 0.4: 2, 0.5: 2}
    assert cal["nonempty"] == {0.8: 1, 0.9: 1, 0.95: 1, 0.97: 1, 0.99: 1}
    # a Lovasz-like tile (salt at 0.75, background at 0.27): only the 0.3-0.7 band finds it confident
    probs[2] = 0.27
    probs[2, :, :60] = 0.75
    cal = calibration(probs, (probs > 0.5).astype(np.uint8), rules)
    assert cal["band"] == {"0.1-0.9": 0, "0.2-0.8": 0, "0.3-0.7": 1} and cal["nonempty"][0.8] == 0
