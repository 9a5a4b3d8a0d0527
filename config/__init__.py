"""Typed experiment config: the schema (``config.schema``) and its strict YAML loader (``config.loader``)."""
from config.loader import (apply_override, dump_config, from_dict, load_config, read_yaml,
                           set_dotted)
from config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig

__all__ = ["Config", "DataConfig", "ModelConfig", "OutputConfig", "TrainConfig", "apply_override", "dump_config",
           "from_dict", "load_config", "read_yaml", "set_dotted"]
