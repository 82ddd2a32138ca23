"""Study files are read with the config's YAML parser and checked by the config engine: same one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from salt_exp.ensemble.options import EnsembleOptions, ensemble_options
from salt_exp.errors import SaltError
from salt_exp.study.spec import load_study_spec
from tests.reliability import reliability

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SPACE = "space:\n  optim.lr: {type: float, low: 1e-3, high: 1e-1, log: true}\n"


def study(tmp_path: Path, text: str, space: str = SPACE) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {TINY}\nset: {{lr_find.enabled: false, optim.lr: 0.01}}\n{space}{text}", encoding="utf-8")
    return path


def test_scientific_notation_in_set_space_and_enqueue_is_a_float(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"base: {TINY}\nset: {{lr_find.enabled: false, optim.lr: 1e-4, schedule.min_lr: 1e-5}}\n"
        "space:\n  optim.momentum: {type: float, low: 1e-3, high: 5e-1}\n"
        "enqueue: [{optim.momentum: 1e-2}]\n",
        encoding="utf-8",
    )
    spec = load_study_spec(path)
    p = spec.space[0]
    assert (p.low, p.high) == (pytest.approx(1e-3), pytest.approx(0.5)) and isinstance(p.low, float)
    assert spec.enqueue == ({"optim.momentum": pytest.approx(1e-2)},)
    cfg = spec.base_config()
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.schedule.min_lr == pytest.approx(1e-5)


def _mistake(case: str, text: str, space: str, message: str):
    return pytest.param(text, space, message, id=case, marks=reliability(
        "bad-input", "study file", case, "SaltError, exactly '<file>: <message>': one line naming the file, the dotted "
        "key and the valid keys or the expected type"))


@pytest.mark.parametrize(
    ("text", "space", "message"),
    [
        _mistake("unknown sampler key", "sampler: {type: tpe, sed: 1}\n", SPACE,
                 "unknown key 'sampler.sed'; valid keys in 'sampler': type, seed, n_startup_trials, multivariate"),
        _mistake("a key of another sampler type", "sampler: {type: random, n_startup_trials: 2}\n", SPACE,
                 "unknown key 'sampler.n_startup_trials'; valid keys in 'sampler': type, seed"),
        _mistake("unknown pruner key", "pruner: {type: hyperband, min_resorce: 1}\n", SPACE,
                 "unknown key 'pruner.min_resorce'; valid keys in 'pruner': type, min_resource, max_resource, "
                 "reduction_factor"),
        _mistake("unknown pruner key without a type", "pruner: {n_warmup_step: 1}\n", SPACE,  # the default's keys
                 "unknown key 'pruner.n_warmup_step'; valid keys in 'pruner': type, n_startup_trials, n_warmup_steps, "
                 "interval_steps"),
        _mistake("unknown key in a float space", "", "space:\n  optim.lr: {type: float, low: 0.1, hihg: 0.2}\n",
                 "unknown key 'space.optim.lr.hihg'; valid keys in 'space.optim.lr': type, low, high, log, step"),
        _mistake("unknown key in a categorical space", "",
                 "space:\n  model.encoder: {type: categorical, choice: [a]}\n",
                 "unknown key 'space.model.encoder.choice'; valid keys in 'space.model.encoder': type, choices"),
        _mistake("unknown ensemble key", "ensemble: {top_cycle: 1}\n", SPACE,
                 "unknown key 'ensemble.top_cycle'; valid keys in 'ensemble': top_cycles, selection, threshold, "
                 "postprocess, report, full_fit, swa, oof_tta, test_context, seam_max_cost"),
        _mistake("wrong type: n_trials", "n_trials: ten\n", SPACE, "'n_trials' expects int, got 'ten'"),
        _mistake("wrong type: timeout", "timeout: soon\n", SPACE, "'timeout' expects float or null, got 'soon'"),
        _mistake("out-of-range pruner value", "pruner: {type: median, n_warmup_steps: -1}\n", SPACE,
                 "'pruner.n_warmup_steps' must be >= 0, got -1"),
        _mistake("unknown sampler type", "sampler: cmaes\n", SPACE,
                 "'sampler.type' expects one of 'tpe', 'random', 'grid', got 'cmaes'"),
        _mistake("space entry without a type", "", "space:\n  optim.lr: {low: 0.1, high: 0.2}\n",
                 "'space.optim.lr.type' expects one of 'float', 'int', 'categorical', got None"),
        _mistake("int space with a float bound", "", "space:\n  schedule.cycles: {type: int, low: 1.5, high: 3}\n",
                 "'space.schedule.cycles.low' expects int, got 1.5"),
        _mistake("enqueued value of the wrong type", "enqueue: [{optim.lr: fast}]\n", SPACE,
                 "'enqueue[0].optim.lr' expects float, got 'fast'"),
        _mistake("enqueued key not in the space", "enqueue: [{optim.momentum: 0.5}]\n", SPACE,
                 "unknown key 'enqueue[0].optim.momentum'; valid keys in 'enqueue[0]': optim.lr"),
        _mistake("out-of-range ensemble value", "ensemble: {top_cycles: 0}\n", SPACE,
                 "'ensemble.top_cycles' must be >= 1, got 0"),
        _mistake("wrong type: ensemble threshold", "ensemble: {threshold: best}\n", SPACE,
                 "'ensemble.threshold' expects float or one of 'search', got 'best'"),
        _mistake("repeated fold", "folds: [0, 0]\n", SPACE,
                 "'folds' must be a non-empty list of distinct fold numbers, got [0, 0]"),
        _mistake("no space", "", "", "'space' is required"),
    ],
)
def test_study_file_mistakes_read_like_config_mistakes(tmp_path, text, space, message):
    path = study(tmp_path, text, space)
    with pytest.raises(SaltError) as err:
        load_study_spec(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.reliability("bad-input", "study file", "YAML syntax error", "SaltError naming the file and the line")
def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(SaltError, match=r"s\.yaml: invalid YAML at line \d"):
        load_study_spec(study(tmp_path, "folds: [\n"))


def test_sampler_and_pruner_keep_only_the_keys_the_file_sets(tmp_path):
    spec = load_study_spec(study(tmp_path, ""))
    assert (spec.sampler, spec.pruner, spec.ensemble) == ({"type": "tpe"}, {"type": "median"}, None)
    spec = load_study_spec(study(tmp_path, "sampler: {seed: 3}\npruner: none\n"))
    assert (spec.sampler, spec.pruner) == ({"type": "tpe", "seed": 3}, {"type": "none"})
    spec = load_study_spec(study(tmp_path, "sampler: null\npruner: {type: hyperband, max_resource: auto}\n"))
    assert (spec.sampler, spec.pruner) == ({"type": "tpe"}, {"type": "hyperband", "max_resource": "auto"})
    path = tmp_path / "empty_set.yaml"  # its own file: study() writes a set: line, and a key may not appear twice
    path.write_text(f"base: {TINY}\nset: {{}}\nenqueue: []\n{SPACE}", encoding="utf-8")
    spec = load_study_spec(path)
    assert spec.overrides == () and spec.enqueue == ()


def test_ensemble_section_is_ensemble_options(tmp_path):
    assert load_study_spec(study(tmp_path, "ensemble: false\n")).ensemble is None
    assert load_study_spec(study(tmp_path, "ensemble: {}\n")).ensemble == EnsembleOptions()
    spec = load_study_spec(study(tmp_path, "ensemble: {top_cycles: 1, threshold: 0.4, report: true}\n"))
    assert spec.ensemble == EnsembleOptions(top_cycles=1, threshold=0.4, postprocess="auto", report=True)


def test_ensemble_options_defaults_and_validation():
    opts = EnsembleOptions()
    assert (opts.top_cycles, opts.threshold, opts.postprocess, opts.report) == (2, "search", "auto", False)
    assert ensemble_options({"threshold": 1}, "x") == EnsembleOptions(threshold=1.0)
    with pytest.raises(SaltError, match=r"^cli: 'top_cycles' must be >= 1, got 0$"):
        ensemble_options({"top_cycles": 0}, "cli")
    with pytest.raises(SaltError, match=r"^f: 'ensemble.report' expects bool, got 'yes'$"):
        ensemble_options({"report": "yes"}, "f", "ensemble.")
    with pytest.raises(SaltError, match=r"^f: unknown key 'top_k'; valid keys at top level: top_cycles, selection, "):
        ensemble_options({"top_k": 2}, "f")
    assert (opts.selection, opts.swa, opts.oof_tta, opts.test_context, opts.seam_max_cost) == (
        "greedy", "include", True, True, 0.5)
    with pytest.raises(SaltError, match=r"^f: 'ensemble.seam_max_cost' must be >= 0.0 and <= 2.0, got 3.0$"):
        ensemble_options({"seam_max_cost": 3}, "f", "ensemble.")
    with pytest.raises(SaltError, match=r"^f: 'ensemble.selection' expects one of 'greedy', 'top', got 'best'"):
        ensemble_options({"selection": "best"}, "f", "ensemble.")


def test_gpu_assignment_is_round_robin_over_the_given_or_visible_gpus(monkeypatch):
    import torch

    from salt_exp.study.driver import gpu_assignment

    assert gpu_assignment(3, ("0", "1")) == ["0", "1", "0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert gpu_assignment(3) == ["4", "6", "4"]  # the real ids of what this process sees
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_assignment(2) == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_assignment(2) == [None, None]
