"""Mosaic context canvases (context.mode image, issue 17): what fills a tile's padding, that nothing crosses the
fold split, that augmentations and the TTA flip move tile and context together, and a context model end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.config import AugmentConfig, config_hash, load_config
from salt_exp.data.context import ContextPool, TileContext, hflip_canvas, padded_alone
from salt_exp.data.dataset import TileDataset
from salt_exp.data.kaggle import load_kaggle
from salt_exp.data.padding import TileAdapter
from salt_exp.data.transforms import CanvasTransform, build_train_transform
from salt_exp.errors import SaltError
from salt_exp.train.setup import load_fold
from tests.test_train_run import CONFIGS, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B = 13  # the tile's first row / column in a 128 canvas (13 before, 14 after)


def _grid(values: dict[tuple[int, int], int], mosaic: int = 0) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """Tiles of one constant value each at (x, y) grid positions: ids, images, mosaic table."""
    ids = [f"t{x}{y}" for x, y in values]
    images = np.stack([np.full((101, 101), v, np.uint8) for v in values.values()])
    frame = pd.DataFrame({"id": ids, "x": [x for x, _ in values], "y": [y for _, y in values], "mosaic_id": mosaic})
    return ids, images, frame


def test_the_padding_holds_each_neighbours_pixels_and_plain_padding_where_none_is():
    # a 3 x 3 block around t11 with its top-right neighbour missing; each tile one value, the centre a gradient
    values = {(x, y): 10 + 20 * (3 * y + x) for y in range(3) for x in range(3) if (x, y) != (2, 0)}
    ids, images, frame = _grid(values)
    centre = ids.index("t11")
    images[centre] = np.arange(101, dtype=np.uint8)[None, :] + np.arange(101, dtype=np.uint8)[:, None]
    canvas, valid = ContextPool(ids, images, frame).canvases(["t11"], images[[centre]], size=128, pad_mode="replicate")
    c, v = canvas[0], valid[0]
    assert (c[B:B + 101, B:B + 101] == images[centre]).all() and v[B:B + 101, B:B + 101].all()
    assert (c[:B, B:B + 101] == values[(1, 0)]).all()  # the tile above: its last 13 rows
    assert (c[B + 101:, B:B + 101] == values[(1, 2)]).all()  # below: its first 14 rows
    assert (c[B:B + 101, :B] == values[(0, 1)]).all() and (c[B:B + 101, B + 101:] == values[(2, 1)]).all()
    assert (c[:B, :B] == values[(0, 0)]).all() and (c[B + 101:, B + 101:] == values[(2, 2)]).all()
    # the missing top-right corner: replicate padding of the tile itself, marked invalid
    plain = TileAdapter("replicate", 128).pad(torch.from_numpy(images[[centre]].astype(np.float32))[:, None])[0, 0]
    assert (c[:B, B + 101:] == plain[:B, B + 101:].numpy()).all()
    assert not v[:B, B + 101:].any() and v.sum() == 128 * 128 - B * (128 - B - 101)
    # a tile the table does not place is padded alone, exactly as a plain model pads it
    alone, valid_alone = ContextPool(ids, images, frame).canvases(["elsewhere"], images[[centre]], size=128,
                                                                  pad_mode="replicate")
    assert (alone[0] == plain.numpy()).all() and valid_alone[0].sum() == 101 * 101


def test_excluded_neighbours_are_absent_and_the_canvas_size_is_checked():
    values = {(x, 0): 50 * (x + 1) for x in range(3)}
    ids, images, frame = _grid(values)
    pool = ContextPool(ids, images, frame)
    canvas, valid = pool.canvases(["t10"], images[[1]], size=128, pad_mode="replicate", exclude={"t20"})
    assert (canvas[0, B:B + 101, :B] == 50).all() and valid[0, B:B + 101, :B].all()  # left neighbour kept
    assert (canvas[0, B:B + 101, B + 101:] == 100).all() and not valid[0, B:B + 101, B + 101:].any()  # right: padding
    assert pool.linked(["t00", "t10", "t20"], exclude={"t10"}) == 1  # only t10 itself still sees a neighbour
    with pytest.raises(SaltError, match="between 101 and 303"):
        pool.canvases(["t10"], images[[1]], size=320, pad_mode="replicate")


def test_the_flip_of_a_canvas_is_the_canvas_of_the_mirrored_mosaic():
    rng = np.random.default_rng(0)
    positions = [(x, y) for y in range(3) for x in range(3)]
    ids = [f"t{x}{y}" for x, y in positions]
    images = rng.integers(0, 256, (9, 101, 101), dtype=np.uint8)
    frame = pd.DataFrame({"id": ids, "x": [x for x, _ in positions], "y": [y for _, y in positions], "mosaic_id": 0})
    mirrored = frame.assign(x=2 - frame["x"])
    c = ContextPool(ids, images, frame).canvases(["t11"], images[[4]], size=128, pad_mode="replicate")[0][0]
    m = ContextPool(ids, images[:, :, ::-1], mirrored).canvases(["t11"], images[[4], :, ::-1], size=128,
                                                                  pad_mode="replicate")[0][0]
    flipped = hflip_canvas(c)
    assert (flipped[B:B + 101, B:B + 101] == images[4, :, ::-1]).all()  # the tile stays in its place
    assert (flipped[:, :-1] == m[:, :-1]).all()  # all but the one column the odd margin invents
    t = hflip_canvas(torch.from_numpy(c.astype(np.float32))[None, None])
    assert (t[0, 0].numpy() == flipped).all()  # the TTA flip (tensors) is the same


def test_canvas_augmentations_keep_the_tile_centre_labelled():
    cfg = AugmentConfig(hflip=0.5, invert=0.0, gamma=0.0, cutout=0.0, crop=1.0, crop_size=88)
    transform = build_train_transform(cfg, seed=3, canvas=128)
    assert isinstance(transform, CanvasTransform)
    canvas = np.full((128, 128), 40, np.uint8)
    canvas[B:B + 101, B:B + 101] = 200
    packed = np.full((128, 128), 2, np.uint8)  # valid everywhere
    packed[B:B + 101, B:B + 101] |= 1  # the tile's mask: all salt
    corners = set()
    for _ in range(60):
        top, left, width = transform.crop_window()
        corners.add((top, left))
        image, out = transform(canvas, packed)
        centre = out[B:B + 101, B:B + 101]
        assert (centre & 1).all(), "the crop moved unlabelled neighbour pixels into the tile"
        assert (image[B + 1:B + 100, B + 1:B + 100] == 200).all()
    assert width == 112 and len(corners) > 20  # zoom 101/88, and as much freedom of position as a tile's crop


def test_the_dataset_gives_canvases_with_a_validity_plane_and_the_tile_mask():
    canvases = np.zeros((2, 128, 128), np.uint8)
    validity = np.zeros((2, 128, 128), np.uint8)
    validity[:, B:B + 101, B:B + 101] = 1
    masks = np.zeros((2, 101, 101), np.uint8)
    masks[1, 50:] = 1
    item = TileDataset(canvases, masks, None, "raw", validity=validity)[1]
    assert item["image"].shape == (2, 128, 128) and item["mask"].shape == (1, 101, 101)
    assert item["image"][1].sum() == 101 * 101 and item["mask"].sum() == 51 * 101
    assert TileDataset(canvases, masks, None, "raw", validity=validity, validity_plane=False)[0]["image"].shape[0] == 1


def test_context_dropout_gives_some_samples_the_plain_input_and_leaves_the_other_draws():
    """context.dropout: a dropped training sample is the tile padded alone (what the plain model reads, and what a
    tile outside every mosaic gets) with validity on the tile only; the flips are the same with or without it."""
    values = {(x, y): 10 + 20 * (3 * y + x) for y in range(3) for x in range(3)}
    ids, images, frame = _grid(values)
    images[:, :, :50] += 5  # not constant across columns: a flip shows
    pool = ContextPool(ids, images, frame)
    canvas, valid = pool.canvases(ids, images, size=128, pad_mode="replicate")
    plain, alone = padded_alone(images, 128, "replicate")
    tile = torch.from_numpy(images[4].astype(np.float32))[None, None]
    assert (plain[4] == TileAdapter("replicate", 128).pad(tile)[0, 0].numpy()).all()  # the plain model's input
    assert valid[4].all() and alone[4].sum() == 101 * 101 and not (canvas[4] == plain[4]).all()
    reused = pool.canvases(ids, images, size=128, pad_mode="replicate", alone=(plain, alone))  # no second padding
    assert (reused[0] == canvas).all() and (reused[1] == valid).all() and not (plain == canvas).all()
    masks = np.zeros((9, 101, 101), np.uint8)
    masks[:, :, :30] = 1
    aug = AugmentConfig(hflip=0.5, invert=0.0, gamma=0.0, cutout=0.0, crop=0.0)

    def items(dropout: float) -> list[dict]:
        transform = build_train_transform(aug, seed=5, canvas=128, context_dropout=dropout)
        ds = TileDataset(canvas, masks, None, "raw", transform=transform, validity=valid, plain=plain)
        return [ds[i % 9] for i in range(120)]

    never, half, always = items(0.0), items(0.5), items(1.0)
    is_plain = []
    for n, h, a in zip(never, half, always, strict=True):
        assert torch.equal(n["mask"], h["mask"]) and torch.equal(n["mask"], a["mask"])  # the same flips
        flipped = not torch.equal(n["mask"][0, :, :30], torch.ones(101, 30))
        i = h["index"]
        expect_plain = hflip_canvas(plain[i]) if flipped else plain[i]
        expect_alone = hflip_canvas(alone[i], valid_plane=True) if flipped else alone[i]
        assert (a["image"][0].mul(255).round().numpy() == expect_plain).all()
        assert (a["image"][1].numpy() == expect_alone).all()
        is_plain.append(torch.equal(h["image"], a["image"]))
        assert is_plain[-1] or torch.equal(h["image"], n["image"])
    assert 40 < sum(is_plain) < 80  # about half
    base = CONFIGS / "tiny.yaml"
    on = load_config(base, ["context.mode=image"])
    assert config_hash(on) == config_hash(load_config(base, ["context.mode=image", "context.dropout=0.0"]))
    assert config_hash(on) != config_hash(load_config(base, ["context.mode=image", "context.dropout=0.3"]))


def test_a_context_model_starts_as_the_plain_model():
    """validity_init zero (the default): the plane's first-conv weights are zero and every other weight is the plain
    model's from the same seed, so the first predictions ignore the plane; random draws a wider first conv."""
    from salt_exp.train.setup import build_parts

    base = CONFIGS / "tiny.yaml"
    plain = build_parts(load_config(base))[0].state_dict()
    zero = build_parts(load_config(base, ["context.mode=image"]))[0].state_dict()
    drawn = build_parts(load_config(base, ["context.mode=image", "context.validity_init=random"]))[0].state_dict()
    (first,) = [k for k in plain if plain[k].shape != zero[k].shape]
    assert zero[first].shape[1] == 2 and not zero[first][:, 1].any() and torch.equal(zero[first][:, :1], plain[first])
    assert all(torch.equal(plain[k], zero[k]) for k in plain if k != first)
    assert drawn[first][:, 1].abs().sum() > 0 and not torch.equal(drawn[first][:, :1], plain[first])
    assert config_hash(load_config(base, ["context.mode=image"])) != config_hash(
        load_config(base, ["context.mode=image", "context.validity_init=random"]))


def test_the_context_section_is_checked_and_hashed_only_when_on():
    base = CONFIGS / "tiny.yaml"
    assert config_hash(load_config(base)) == config_hash(load_config(base, ["context.validity=false"]))  # inert
    assert config_hash(load_config(base, ["context.mode=image"])) != config_hash(load_config(base))
    for bad, match in ((["context.mode=image", "padding.mode=resize", "padding.size=64"], "padding.mode must not be resize"),
                       (["context.mode=image", "augment.shift_scale_rotate=0.5"], "shift_scale_rotate"),
                       (["context.mode=neighbours"], "context.mode")):
        with pytest.raises(SaltError, match=match):
            load_config(base, bad)


def test_no_canvas_crosses_the_fold_split(synth_dir):
    """Random folds put mosaic neighbours on both sides of the split: every training canvas holds only training
    and test tiles' pixels, every validation canvas only validation and test tiles'. Mosaic-grouped folds need
    no exclusion at all."""
    data = load_kaggle(synth_dir)
    pool = ContextPool.from_data(data)
    fd = load_fold(tiny_cfg(synth_dir, "context.mode=image", "data.folds_scheme=random"), 0)
    train_ids, val_ids = data.train.ids[fd.train_idx], data.train.ids[fd.val_idx]
    test_ids = set(data.test.ids)
    crossing = 0
    for ids, own, other, canv in ((train_ids, train_ids, val_ids, fd.context.train), (val_ids, val_ids, train_ids, fd.context.val)):
        allowed = set(own) | test_ids
        for tid in ids:
            seen = pool.neighbours(tid, exclude=set(other))
            assert set(seen.values()) <= allowed
            crossing += len(pool.neighbours(tid)) - len(seen)
        # and the pixels say the same: the canvases equal those built from the allowed tiles alone
        keep = [t for t in pool.row if t in allowed]
        alone = ContextPool(keep, pool.images[[pool.row[t] for t in keep]], data.mosaics)
        canvas, valid = alone.canvases(ids.tolist(), data.train.images[data.train.position(ids.tolist())], size=128,
                                       pad_mode="replicate")
        assert (canvas == canv.images).all() and (valid == canv.validity).all()
    assert crossing > 0  # random folds do split mosaics: the exclusion had work to do
    grouped = load_fold(tiny_cfg(synth_dir, "context.mode=image", "data.folds_scheme=mosaic", "data.n_folds=3"), 0)
    t_ids, v_ids = data.train.ids[grouped.train_idx], data.train.ids[grouped.val_idx]
    assert grouped.context.train.linked == pool.linked(t_ids) and grouped.context.val.linked == pool.linked(v_ids)
    assert grouped.context.val.linked > 0


@pytest.mark.slow
def test_a_context_model_trains_ensembles_and_predicts_with_its_neighbours(synth_dir, mlflow_store, tmp_path):
    """cv of a tiny context model on mosaic folds, then its ensemble (OOF with TTA, test tiles, submission): the
    whole path reads canvases; a served prediction with neighbours differs from one without."""
    args = ["cv", str(CONFIGS / "tiny.yaml"), "--study", "ctx", "--folds", "0", "--set", f"data.root={synth_dir}",
            "--set", "context.mode=image", "--set", "data.folds_scheme=mosaic", "--set", "data.n_folds=3", "--set", "train.max_train_batches=3",
            "--set", "schedule.cycle_epochs=1", "--set", "lr_find.steps=6", "--set", "augment.crop=0.5",
            "--set", "context.dropout=0.3"]
    assert main(args) == 0
    c = MlflowClient(mlflow_store)
    fold_run = c.search_runs([c.get_experiment_by_name("salt/ctx").experiment_id], "tags.`salt.role` = 'fold'")[0]
    assert int(fold_run.data.params["context_linked_val"]) > 0 and fold_run.data.params["context.mode"] == "image"
    out = tmp_path / "sub.csv"
    assert main(["ensemble", "--study", "ctx", "--folds", "0", "--out", str(out)]) == 0
    sub = pd.read_csv(out, keep_default_na=False)
    assert sorted(sub["id"]) == sorted(pd.read_csv(synth_dir / "sample_submission.csv")["id"])
    from salt_exp.ensemble.predict import member_predictor
    from salt_exp.ensemble.select import select_members
    from salt_exp.stores import download_cache

    member = next(iter(select_members(["salt-ctx"], 1).values()))[0]
    predictor = member_predictor(member, download_cache())
    data = load_kaggle(synth_dir)
    ids = data.test.ids[:8].tolist()
    images = data.test.images[:8]
    with_context = predictor.probs(images, data.test.depths[:8], context=TileContext.of_data(data, ids))
    alone = predictor.probs(images, data.test.depths[:8])
    assert with_context.shape == alone.shape == (8, 101, 101)
    assert not np.allclose(with_context, alone)  # the neighbours reach the network
    assert np.isfinite(with_context).all()
