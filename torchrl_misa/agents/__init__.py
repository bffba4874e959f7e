"""Many independent agents of one TorchRL loss module, trained in one process."""

from .compat import make_vmap_compatible, OutOfPlaceTanhNormal, VmapCQLLoss
from .group import AgentGroup

__all__ = ["AgentGroup", "OutOfPlaceTanhNormal", "VmapCQLLoss", "make_vmap_compatible"]
