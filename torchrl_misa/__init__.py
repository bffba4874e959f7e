"""MISA (Mutual Information Regularized Offline RL) for TorchRL."""

from torchrl_misa import (
    data,
)  # noqa: F401  (registers the d4rl/d4rl_file dataset prefixes)
from torchrl_misa.objectives import MISALoss

__all__ = ["MISALoss"]
