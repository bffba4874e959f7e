"""MISA (Mutual Information Regularized Offline RL) for TorchRL."""

from torchrl_misa.objectives import MISALoss

__all__ = ["MISALoss"]
