"""wash-sweeps: WASH (weight shuffling, then averaging) and its baselines, measured and swept."""

from .config import ConfigError, TrainConfig
from .results import load_averaged
from .train import DivergedError, train_and_evaluate

__all__ = ["ConfigError", "DivergedError", "TrainConfig", "load_averaged", "train_and_evaluate"]
__version__ = "0.1.0"
