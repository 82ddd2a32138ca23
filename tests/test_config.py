from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from salt_exp.config import (
    ExperimentConfig,
    apply_overrides,
    config_hash,
    dump_yaml,
    engine,
    flatten,
    load_config,
    to_dict,
)
from salt_exp.errors import SaltError
from tests.reliability import reliability

BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_base_yaml_spells_out_the_defaults():
    assert load_config(BASE) == ExperimentConfig(name="base")


def test_reference_defaults():
    cfg = ExperimentConfig()
    assert cfg.model.decoder_channels == (256, 128, 64, 32, 16)
    assert cfg.loss.seg_terms == {"bce": 1.0, "lovasz": 0.5}
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.batch_size) == ("sgd", "auto", 0.9, 16)
    assert (cfg.schedule.cycles, cfg.schedule.cycle_epochs) == (10, 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_extends_is_relative_recursive_and_deep_merged(tmp_path):
    write(
        tmp_path / "a.yaml", "seed: 1\noptim: {lr: 0.05, batch_size: 8}\nloss: {seg_terms: {bce: 1.0, lovasz: 0.5}}\n"
    )
    write(
        tmp_path / "sub" / "b.yaml", "extends: ../a.yaml\noptim: {batch_size: 32}\nloss: {seg_terms: {lovasz: 1.0}}\n"
    )
    c = write(tmp_path / "sub" / "c.yaml", "extends: b.yaml\nname: c\n")
    cfg = load_config(c)
    assert (cfg.name, cfg.seed, cfg.optim.lr, cfg.optim.batch_size) == ("c", 1, 0.05, 32)
    assert cfg.loss.seg_terms == {"lovasz": 1.0}  # a dict value is replaced, not merged
    assert cfg.optim.momentum == 0.9  # untouched keys keep their defaults


@pytest.mark.reliability("bad-input", "config file", "extends cycle",
                         "SaltError naming the cycle of files")
def test_extends_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SaltError, match="cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.reliability("bad-input", "config file", "extends a missing file",
                         "one-line SaltError naming the missing file and the file that extends it")
def test_missing_extends_names_both_files(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: nope.yaml\n")
    with pytest.raises(SaltError, match=r"nope\.yaml.*extended from .*a\.yaml"):
        load_config(a)


def test_overrides_parse_yaml_values():
    cfg = load_config(
        BASE,
        [
            "optim.lr=5e-2",
            "model.decoder_channels=[64,32,16,8,4]",
            "loss.seg_terms.lovasz=1",
            "train.max_train_batches=3",
            "optim.grad_clip=null",
            "data.channels=coord",
        ],
    )
    assert cfg.optim.lr == pytest.approx(0.05) and isinstance(cfg.optim.lr, float)
    assert cfg.model.decoder_channels == (64, 32, 16, 8, 4)
    assert cfg.loss.seg_terms == {"bce": 1.0, "lovasz": 1.0}
    assert cfg.train.max_train_batches == 3 and cfg.optim.grad_clip is None
    assert cfg.data.channels == "coord"
    assert load_config(BASE, ["optim.lr=auto"]).optim.lr == "auto"


def test_plain_string_fields_take_override_text_as_written():
    cfg = load_config(BASE, ["name=yes", "model.encoder=2024", "data.root=a: b"])
    assert (cfg.name, cfg.model.encoder, cfg.data.root) == ("yes", "2024", "a: b")
    with pytest.raises(SaltError, match="expects one of 'raw'"):
        load_config(BASE, ["data.channels=true"])


def test_scientific_notation_in_files_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path / "a.yaml", "schedule: {min_lr: 1e-5}\n"))
    assert cfg.schedule.min_lr == pytest.approx(1e-5)


@pytest.mark.reliability("bad-input", "config file", "unknown key optim.learning_rate",
                         "one-line SaltError naming the file, 'optim.learning_rate' and every valid key of optim "
                         "(--set bogus=1: the top-level keys)")
def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    path = write(tmp_path / "a.yaml", "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(SaltError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "a.yaml" in message and "'optim.learning_rate'" in message
    for key in ("name", "lr", "momentum", "weight_decay", "nesterov", "batch_size", "grad_clip"):
        assert key in message
    with pytest.raises(SaltError, match=r"unknown key 'bogus'.*valid keys at top level: name, seed, data"):
        load_config(BASE, ["bogus=1"])


def _bad_value(override: str, pattern: str):
    return pytest.param(override, pattern, id=override, marks=reliability(
        "bad-input", "config file", f"--set {override}", f"one-line SaltError holding the override and {pattern!r}"))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        _bad_value("seed=abc", r"'seed' expects int, got 'abc'"),
        _bad_value("optim.batch_size=1.5", r"'optim.batch_size' expects int"),
        _bad_value("model.scse=3", r"'model.scse' expects bool"),
        _bad_value("model.decoder_channels=[64, x]", r"'model.decoder_channels' expects a list of int"),
        _bad_value("augment.gamma_limit=[0.9]", r"'augment.gamma_limit' expects a list of 2 float"),
        _bad_value("optim.lr=fast", r"'optim.lr' expects float or one of 'auto'"),
        _bad_value("data.channels=rgb", r"'data.channels' expects one of 'raw', 'depth', 'coord', got 'rgb'"),
        _bad_value("padding.mode=wrap",
                   r"one of 'replicate', 'reflect', 'reflect_replicate', 'zero', 'biharmonic', 'resize'"),
        _bad_value("optim.name=rmsprop", r"one of 'sgd', 'adam', 'adamw'"),
        _bad_value("augment.hflip=1.5", r"'augment.hflip' must be >= 0.0 and <= 1.0, got 1.5"),
        _bad_value("optim.lr.value=1", r"'optim.lr' is a value"),
        _bad_value("loss.seg_terms={}", r"'loss.seg_terms' expects a mapping of str to float"),
        _bad_value("loss.seg_terms.bce=-1", r"'loss.seg_terms' must be >= 0.0"),
        _bad_value("optim=3", r"'optim' must be a mapping"),
        _bad_value("novalue", r"expected 'key.sub=value'"),
    ],
)
def test_bad_values_raise_one_line_errors(override, pattern):
    with pytest.raises(SaltError, match=pattern) as info:
        load_config(BASE, [override])
    assert "\n" not in str(info.value) and override in str(info.value)


@pytest.mark.reliability("bad-input", "config file", "fields that contradict each other",
                         "SaltError naming the rule: lr auto without the LR finder, warmup not shorter than a cycle")
def test_cross_field_rules():
    with pytest.raises(SaltError, match="lr_find.enabled is false"):
        load_config(BASE, ["lr_find.enabled=false"])
    assert load_config(BASE, ["lr_find.enabled=false", "optim.lr=0.05"]).optim.lr == 0.05
    with pytest.raises(SaltError, match="warmup_epochs"):
        load_config(BASE, ["schedule.warmup_epochs=50"])


@pytest.mark.reliability("bad-input", "config file", "YAML syntax error: unclosed bracket",
                         "SaltError naming the file and the line")
def test_invalid_yaml_names_file_and_line(tmp_path):
    with pytest.raises(SaltError, match=r"a\.yaml: invalid YAML at line \d"):
        load_config(write(tmp_path / "a.yaml", "seed: 1\noptim: [\n"))


def test_dump_yaml_round_trips(tmp_path):
    cfg = load_config(BASE, ["name=run 1: x", "optim.lr=3e-2", "optim.grad_clip=1.0", "data.channels=depth"])
    again = load_config(write(tmp_path / "dump.yaml", dump_yaml(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_flatten_replays_as_overrides():
    cfg = load_config(BASE, ["name=yes", "model.decoder_channels=[8,8]", "loss.seg_terms={bce: 2.0}"])
    flat = flatten(cfg)
    assert flat["model.decoder_channels"] == "[8, 8]" and flat["optim.lr"] == "auto"
    assert all(isinstance(v, str) for v in flat.values())
    assert load_config(BASE, [f"{k}={v}" for k, v in flat.items()]) == cfg
    leaves = []
    for key, value in to_dict(cfg).items():
        leaves += [f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]
    assert list(flat) == leaves and flat["loss.seg_terms"] == "{bce: 2.0}"


def test_config_hash_is_stable_and_ignores_the_name():
    a = ExperimentConfig()
    assert config_hash(a) == config_hash(ExperimentConfig()) == config_hash(dataclasses.replace(a, name="other"))
    assert config_hash(a) != config_hash(apply_overrides(a, ["seed=7"]))
    assert len(config_hash(a)) == 12


def test_apply_overrides_validates():
    cfg = apply_overrides(ExperimentConfig(), ["augment.crop=0", "optim.name=adamw"])
    assert (cfg.augment.crop, cfg.optim.name) == (0.0, "adamw")
    with pytest.raises(SaltError, match="valid keys in 'augment'"):
        apply_overrides(cfg, ["augment.vflip=0.5"])


@dataclasses.dataclass(frozen=True)
class _Inner:
    size: int = engine.num(1, ge=1)


@dataclasses.dataclass(frozen=True)
class _Fast:
    type: Literal["fast"] = "fast"
    rate: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Slow:
    type: Literal["slow"] = "slow"
    delay: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Toy:
    label: str
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    mode: _Fast | _Slow = dataclasses.field(default_factory=_Fast)
    extra: _Inner | None = None
    named: dict[str, _Fast | _Slow] = dataclasses.field(default_factory=dict)


def test_engine_checks_any_dataclass_schema():
    raw = {"label": "x", "inner": {"size": 3}, "mode": "slow", "extra": None, "named": {"a": {"type": "fast", "rate": 2}}}
    checked = engine.check_mapping(raw, _Toy, "toy.yaml")
    assert checked["mode"] == {"type": "slow"} and checked["named"] == {"a": {"type": "fast", "rate": 2.0}}
    toy = engine.build(_Toy, checked)
    assert toy == _Toy(label="x", inner=_Inner(3), mode=_Slow(), named={"a": _Fast(rate=2.0)})
    assert engine.from_mapping({"label": "y", "mode": {"rate": 3}}, _Toy, "t").mode == _Fast(rate=3.0)
    merged = engine.merge(checked, engine.check_mapping({"label": "z", "mode": {"type": "fast"}}, _Toy, "t"), _Toy)
    assert engine.build(_Toy, merged).mode == _Fast() and merged["inner"] == {"size": 3}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "'label' is required"),
        ({"label": "x", "lable": 1}, "unknown key 'lable'; valid keys at top level: label, inner, mode, extra, named"),
        ({"label": "x", "inner": {"sise": 1}}, "unknown key 'inner.sise'; valid keys in 'inner': size"),
        ({"label": "x", "inner": {"size": 0}}, "'inner.size' must be >= 1, got 0"),
        ({"label": "x", "mode": {"type": "slow", "rate": 1}}, "unknown key 'mode.rate'; valid keys in 'mode': type, delay"),
        ({"label": "x", "mode": "medium"}, "'mode.type' expects one of 'fast', 'slow', got 'medium'"),
        ({"label": "x", "mode": 3}, "'mode' must be a mapping with a type ('fast', 'slow') or just the type, got 3"),
        ({"label": "x", "extra": 3}, "'extra' must be a mapping with keys size, got 3"),
        ({"label": "x", "named": {"a": {"rate": 1}}}, "'named.a.type' expects one of 'fast', 'slow', got None"),
        ({"label": "x", "named": {"a": {"type": "slow", "delay": "x"}}}, "'named.a.delay' expects int, got 'x'"),
    ],
)
def test_engine_errors_name_where_and_the_dotted_key(raw, message):
    with pytest.raises(SaltError) as info:
        engine.check_mapping(raw, _Toy, "toy.yaml")
    assert str(info.value) == f"toy.yaml: {message}"


def test_engine_yaml_reads_exponents_as_floats():
    assert engine.parse_yaml("a: 1e-4\nb: 1.5E+3\nc: 1e\n", "x") == {"a": 1e-4, "b": 1500.0, "c": "1e"}
