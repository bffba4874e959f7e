"""MISA (Mutual Information Regularized Offline RL) for TorchRL.

Importing the package registers one new dataset prefix, ``"d4rl_file"``, in
:func:`torchrl.data.datasets.load_dataset` (a local D4RL-layout file, see
:mod:`torchrl_misa.data`); it changes nothing else in TorchRL.
"""

# importing the data package registers one new dataset prefix, "d4rl_file"
# (torchrl.data.datasets.load_dataset); TorchRL's own prefixes are left alone
from torchrl_misa import data  # noqa: F401
from torchrl_misa.objectives import MISALoss

__all__ = ["MISALoss"]

# N independent agents of one loss module trained in one vmapped update
from torchrl_misa.agents import AgentGroup  # noqa: E402

__all__ += ["AgentGroup"]
