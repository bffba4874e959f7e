"""Losses of torchrl_misa."""

from torchrl_misa.objectives.misa import MISALoss

__all__ = ["MISALoss"]
