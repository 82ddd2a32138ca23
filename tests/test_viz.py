"""Visual analysis: the analysis numbers, the figures' content, GIFs, the HTML page in Chromium, CLI errors.

The end-to-end path (study runs -> ensemble -> mosaic PNG, evolution GIF, report logged to MLflow and
opened in Chromium) is in tests/test_ensemble.py, next to the ensemble it needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from salt_exp.cli import main
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError
from salt_exp.metrics import image_scores
from salt_exp.plots import breakdown_figure
from salt_exp.viz.analysis import MASK_TYPES, analyse, depth_bands, mask_types
from salt_exp.viz.evolution import Frame, improving_steps, write_gif
from salt_exp.viz.figures import gallery_figure, threshold_figure
from salt_exp.viz.html import Section, render_page
from salt_exp.viz.mosaic_plot import figure_rgb, pick_mosaic, render_mosaic
from tests.browser import dump_dom, screenshot
from tests.conftest import REAL_TGS

H = 101


def _textured(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, H), dtype=np.uint8)


def _typed_tiles() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One tile of each mask type, plus a blank tile that (against the real data) holds salt."""
    images = np.stack([_textured(i) for i in range(6)])
    images[0] = 120  # blank
    images[5] = 77  # blank too
    masks = np.zeros((6, H, H), np.uint8)
    masks[2, :, :40] = 1  # vertical: every row the same, neither empty nor full
    masks[3, 60:, :] = 1  # cap: last row fully salt
    masks[4, 10:50, 20:70] = 1  # other: a blob
    masks[5, 50:, :] = 1  # blank wins over cap
    return images, masks, ["blank", "empty", "vertical", "cap", "other", "blank"]


def test_mask_types_follow_the_annotation_logic_first_match_wins():
    images, masks, expected = _typed_tiles()
    assert [MASK_TYPES[i] for i in mask_types(images, masks)] == expected
    # "vertical" needs only the bottom 30 rows equal: a shape above them does not matter
    m = np.zeros((1, H, H), np.uint8)
    m[0, 70:, :30] = 1
    m[0, 10:20, 50:60] = 1
    assert MASK_TYPES[mask_types(images[1:2], m)[0]] == "vertical"
    m[0, 75, 40] = 1  # one pixel breaks the equal rows
    assert MASK_TYPES[mask_types(images[1:2], m)[0]] == "other"


def test_depth_bands_hold_equal_counts_and_name_their_range():
    depths = np.arange(100, 1100, 10, dtype=np.float32)  # 100 tiles
    band, names = depth_bands(depths, 4)
    assert np.bincount(band).tolist() == [25, 25, 25, 25]
    assert names[0].startswith("100-") and names[-1].endswith("-1090 ft")
    assert all(depths[band == b].max() <= depths[band == b + 1].min() for b in range(3))
    band, names = depth_bands(np.full(7, 500.0), 5)
    assert band.tolist() == [0] * 7 and names == ("500 ft",)


def test_analysis_scores_groups_and_worst_tiles():
    rng = np.random.default_rng(0)
    images, truth, _ = _typed_tiles()
    probs = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 1).astype(np.float16)
    pred = probs > 0.5
    a = analyse(np.array([f"t{i}" for i in range(6)]), pred, truth, images=images, depths=np.arange(6) * 100.0,
                probs=probs, used_threshold=0.5)
    assert a.scores.tolist() == image_scores(pred, truth).tolist()
    for rows in (a.coverage, a.depth, a.types):
        assert sum(r["count"] for r in rows) == 6
        assert sum(r["err_share"] for r in rows) == pytest.approx(1.0 if (1 - a.scores).sum() > 0 else 0.0)
    assert [r["count"] for r in a.types] == [2, 1, 1, 1, 1]
    # the curve at t = 0.5 is the score of probs > 0.5
    assert a.curve[list(a.thresholds).index(0.5)] == pytest.approx(a.score)
    assert a.empty_fp == int(sum(1 for i in range(6) if not truth[i].any() and pred[i].any()))
    assert a.fold_curves == []  # no folds given: one curve
    fold, thr = np.array([0, 0, 0, 1, 1, 1]), np.array([0.3] * 3 + [0.6] * 3, np.float32)
    per_fold = analyse(a.ids, pred, truth, images=images, depths=np.arange(6) * 100.0, probs=probs, used_threshold=0.45,
                       fold=fold, tile_threshold=thr)
    assert [(f, round(t, 2)) for f, t, _ in per_fold.fold_curves] == [(0, 0.3), (1, 0.6)]
    k = list(a.thresholds).index(0.6)
    assert per_fold.fold_curves[1][2][k] == pytest.approx(image_scores(probs[3:] > 0.6, truth[3:]).mean())
    worst = a.worst(3)
    assert a.scores[worst].tolist() == sorted(a.scores.tolist())[:3]
    # ties are broken by more wrong pixels first
    tied = [i for i in worst if a.scores[i] == a.scores[worst[0]]]
    assert a.wrong_pixels[tied].tolist() == sorted(a.wrong_pixels[tied].tolist(), reverse=True)


def _grid_index(rows: int, cols: int, prefix: str = "t", missing: tuple = ()) -> MosaicIndex:
    recs = [(f"{prefix}{r}_{c}", c, r, 3) for r in range(rows) for c in range(cols) if (r, c) not in missing]
    return MosaicIndex.from_frame(pd.DataFrame(recs, columns=["id", "x", "y", "mosaic_id"]))


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_mosaic_render_has_title_labels_legend_and_the_tile_scores():
    index = _grid_index(2, 3, missing=((1, 2),))
    ids = sorted(index.position)
    images = {t: _textured(i) for i, t in enumerate(ids)}
    truth = {t: np.zeros((H, H), np.uint8) for t in ids[:4]}
    truth[ids[0]][:, :50] = 1
    pred = {t: m.copy() for t, m in truth.items()}
    pred[ids[1]][:5, :5] = 1  # a false positive on an empty tile: score 0
    fig = render_mosaic(index, 3, images=images, truth=truth, pred=pred, title="unit test", test_ids={ids[4]})
    ax = fig.axes[0]
    assert "unit test" in ax.get_title() and "mosaic 3" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("ground truth" in t for t in legend) and any("prediction" in t for t in legend)
    assert any("test tile" in t for t in legend) and any("no prediction" in t for t in legend)
    scored = ids[:4]
    values = image_scores(np.stack([pred[t] for t in scored]), np.stack([truth[t] for t in scored]))
    scores = dict(zip(scored, values, strict=True))
    assert sorted(_texts(fig)) == sorted(f"{s:.2f}" for s in scores.values())
    assert "0.00" in _texts(fig)
    rgb = figure_rgb(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 10
    with pytest.raises(SaltError, match="unknown mosaic_id 9"):
        render_mosaic(index, 9, images=images, truth=truth, pred=pred, title="x")


def test_pick_mosaic_prefers_the_most_scored_tiles():
    a = _grid_index(2, 2, "a")
    frame = pd.concat([pd.DataFrame([(t, *a.position[t][1:], 1) for t in a.position], columns=["id", "x", "y", "mosaic_id"]),
                       pd.DataFrame([(f"b{i}", i, 0, 0) for i in range(3)], columns=["id", "x", "y", "mosaic_id"])])
    index = MosaicIndex.from_frame(frame)
    truth = {t: np.zeros((H, H)) for t in index.position}
    assert pick_mosaic(index, truth, {t: truth[t] for t in list(a.position)}) == 1
    assert pick_mosaic(index, truth, {"b0": truth["b0"]}) == 0


def test_evolution_keeps_only_improving_frames_on_the_same_tiles():
    truth = {f"t{i}": np.zeros((H, H), np.uint8) for i in range(4)}
    for m in truth.values():
        m[40:, :] = 1

    def masks(n_right: int, covered: int = 4) -> dict:
        out = {}
        for i in range(covered):
            out[f"t{i}"] = truth[f"t{i}"].copy() if i < n_right else np.zeros((H, H), np.uint8)
        return out

    frames = [Frame(f"f{k}", k, ()) for k in range(6)]
    got = improving_steps(frames, [masks(1), masks(0), masks(2), masks(2), masks(4, covered=3), masks(3)],
                          truth, list(truth))
    # f4 covers only 3 of the 4 tiles: it cannot be compared and drops out, even though it is perfect there
    assert [s.frame.label for s in got] == ["f0", "f2", "f5"]
    assert [s.score for s in got] == [0.25, 0.5, 0.75]
    assert improving_steps(frames[:1], [{}], truth, list(truth)) == []


def test_gif_holds_every_frame_in_order(tmp_path):
    frames = [np.full((40, 60, 3), v, np.uint8) for v in (0, 120, 250)]
    path = write_gif(frames, tmp_path / "a.gif", ms_per_frame=500, last_ms=2000)
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.size == (60, 40) and im.info["loop"] == 0
        seen = []
        for k in range(3):
            im.seek(k)
            seen.append((int(np.asarray(im.convert("L")).mean()), im.info["duration"]))
    assert [v for v, _ in seen] == [0, 120, 250] and [d for _, d in seen] == [500, 500, 2000]
    with pytest.raises(SaltError, match="no frames"):
        write_gif([], tmp_path / "b.gif")
    assert not (tmp_path / "b.gif").exists()


def test_report_figures_are_readable():
    images, truth, _ = _typed_tiles()
    probs = np.clip(truth * 0.8 + 0.1, 0, 1).astype(np.float16)
    a = analyse(np.array([f"t{i}" for i in range(6)]), probs > 0.5, truth, images=images, depths=np.arange(6) * 50.0,
                probs=probs, used_threshold=0.5)
    figs = [breakdown_figure(a.types, "type", "by type", "mask type"), threshold_figure(a, "curve"),
            gallery_figure(a, a.worst(4), images=images, truth=truth, pred=probs > 0.5, depths=np.arange(6) * 50.0,
                           title="worst", per_row=2)]
    for fig in figs:
        assert (fig._suptitle is not None and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)
        shown = [ax for ax in fig.axes if ax.axison]
        assert shown and all(ax.get_xlabel() for ax in shown)
        assert fig.legends or all(ax.get_legend() is not None for ax in shown if ax.get_ylabel())
    assert all(ax.get_ylabel() for ax in figs[0].axes + figs[1].axes)


def _png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((20, 30), value, np.uint8)).save(path)
    return path


def test_html_page_is_self_contained_and_loads_in_chromium(tmp_path):
    sections = [Section(id="summary", heading="Summary <&>", text="text with <script>alert(1)</script>",
                        table=[{"what": "x", "value": 0.5}]),
                Section(id="figs", heading="Figures", figures=[(_png(tmp_path / "a.png", 10), "first"), (_png(tmp_path / "b.png", 200), "second")])]
    page = tmp_path / "page.html"
    page.write_text(render_page("Title", "sub", sections), encoding="utf-8")
    (tmp_path / "a.png").unlink()  # embedded: the page must not need the files any more
    html = page.read_text()
    assert "<script>alert" not in html and "http" not in html.replace("http-equiv", "")
    dom = dump_dom(page, tmp_path)
    assert 'data-images-ok="2/2"' in dom
    assert '<section id="summary">' in dom and '<section id="figs">' in dom and "Summary &lt;&amp;&gt;" in dom
    shot = screenshot(page, tmp_path / "shot.png", tmp_path, (800, 600))
    assert np.asarray(Image.open(shot).convert("L")).std() > 5  # something was drawn


def test_viz_commands_fail_with_one_line(mlflow_store, tmp_path, capsys):
    assert main(["viz", "mosaic"]) == 1
    assert "exactly one of --run" in capsys.readouterr().err
    assert main(["report", "--study", "nothing"]) == 1
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error:")]  # (MLflow may log its store set-up above it)
    assert len(line) == 1 and "no champion ensemble" in line[0] and "make ensemble NAME=nothing" in line[0]
    assert main(["report", "--run", "0123456789abcdef"]) == 1
    assert "no such MLflow run" in capsys.readouterr().err
    assert main(["viz", "evolution", "--study", "nothing"]) == 1
    assert "no registered snapshots" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,rle_mask\na,1 2\na,3 4\n")
    assert main(["viz", "mosaic", "--submission", str(bad), "--data", str(tmp_path)]) == 1
    assert "bad.csv: duplicate id a" in capsys.readouterr().err


def test_mosaic_of_a_submission_scores_its_test_tiles(synth_dir, tmp_path, capsys):
    """The solution itself submitted: every test tile of the drawn mosaic scores 1.00 (no MLflow needed)."""
    out, sub = tmp_path / "viz", tmp_path / "perfect.csv"
    pd.read_csv(synth_dir / "solution.csv", dtype=str, keep_default_na=False)[["id", "rle_mask"]].to_csv(sub, index=False)
    assert main(["viz", "mosaic", "--submission", str(sub), "--data", str(synth_dir), "--out", str(out)]) == 0
    pngs = list(out.glob("mosaic_*.png"))
    assert len(pngs) == 1 and f"wrote {pngs[0]}" in capsys.readouterr().out
    with Image.open(pngs[0]) as im:
        assert im.size[0] > 600 and im.size[1] > 400
    from salt_exp.viz.commands import load_scene
    from salt_exp.viz.sources import submission_output

    scene, output = load_scene(synth_dir), submission_output(sub)
    m = int(pngs[0].stem.split("_")[1])
    fig = render_mosaic(scene.index, m, images=scene.images, truth=scene.truth, pred=output.masks(), title="solution",
                        test_ids=scene.test_ids)
    placed_test = [t for (mid, _, _), t in scene.index.tile_at.items() if mid == m and t in scene.test_ids]
    assert placed_test and _texts(fig) == ["1.00"] * len(placed_test)


@pytest.mark.skipif(not (REAL_TGS / "train.csv").exists(), reason="real TGS data (../shared/tgs) not present")
def test_real_masks_types_and_a_real_mosaic_drawn_with_the_truth_as_prediction():
    from salt_exp.data.kaggle import load_kaggle

    data = load_kaggle(REAL_TGS)
    train = data.train
    types = mask_types(train.images, train.masks)
    empty_masks = int((train.masks.reshape(len(train), -1).max(axis=1) == 0).sum())
    assert (types == 0).sum() == train.blank.sum()  # agrees with the loader's own blank test
    assert (types == 0).sum() + (types == 1).sum() == empty_masks  # every real blank tile is empty
    assert min(np.bincount(types, minlength=5)[2:]) > 50  # vertical, cap and other all occur in real labels
    index = MosaicIndex.from_frame(data.mosaics)
    masks = dict(zip(train.ids.tolist(), train.masks, strict=True))
    m = pick_mosaic(index, masks, masks)
    fig = render_mosaic(index, m, images=dict(zip(train.ids.tolist(), train.images, strict=True)), truth=masks, pred=masks,
                        title="truth")
    drawn = [t for (mid, _, _), t in index.tile_at.items() if mid == m and t in masks]
    assert len(drawn) > 10 and _texts(fig) == ["1.00"] * len(drawn)
