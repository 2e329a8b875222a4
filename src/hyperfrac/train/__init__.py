"""Training toolkit: typed configs, the trainer loop, optimizer groups, atomic checkpoints,
stability guards and metrics logging. Entry point: ``hyperfrac train CONFIG.yaml key=value``."""

from hyperfrac.train.config import RunConfig, dump_config, load_config
from hyperfrac.train.trainer import Trainer

__all__ = ["RunConfig", "Trainer", "dump_config", "load_config"]
