"""MISA (Mutual Information Regularized Offline RL) for TorchRL."""

# importing the data package registers the "d4rl" and "d4rl_file" dataset prefixes
from torchrl_misa import data  # noqa: F401
from torchrl_misa.objectives import MISALoss

__all__ = ["MISALoss"]
