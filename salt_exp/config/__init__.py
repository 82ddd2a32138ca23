"""One experiment = one frozen, typed config: YAML (with ``extends:``) plus dotted overrides.

``load_config("configs/study.yaml", ["optim.lr=auto"])`` returns an :class:`ExperimentConfig`; unknown
keys, wrong types, out-of-range numbers and invalid choices raise a one-line
:class:`~salt_exp.errors.SaltError` naming the dotted key, the source and the valid options. Build the
config at entry points and pass explicit typed arguments below them.

Modules: ``schema`` (the dataclasses and cross-field rules), ``engine`` (schema-agnostic checking of
raw mappings against any frozen dataclass, and the YAML parser), ``files`` (files, ``extends:`` and
overrides), ``export`` (dict, dotted params, YAML, hash).
"""

from salt_exp.config.export import config_hash, dump_yaml, flatten, to_dict
from salt_exp.config.files import apply_overrides, config_from_dict, load_config
from salt_exp.config.schema import (
    AugmentConfig,
    Channels,
    ContextConfig,
    DataConfig,
    Device,
    ExperimentConfig,
    FoldsScheme,
    LossConfig,
    LRFindConfig,
    ModelConfig,
    OptimConfig,
    OptimName,
    PaddingConfig,
    PaddingMode,
    PseudoConfig,
    ScheduleConfig,
    SyncConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "Channels",
    "DataConfig",
    "Device",
    "ExperimentConfig",
    "FoldsScheme",
    "LRFindConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OptimName",
    "ContextConfig",
    "PaddingConfig",
    "PaddingMode",
    "PseudoConfig",
    "ScheduleConfig",
    "SyncConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_hash",
    "dump_yaml",
    "flatten",
    "load_config",
    "to_dict",
]
