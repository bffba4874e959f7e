"""Many independent agents of one TorchRL loss module, trained in one process."""

from .compat import (
    make_vmap_compatible,
    OutOfPlaceTanhNormal,
    VmapCQLLoss,
    VmapIQLLoss,
)
from .group import AgentGroup

__all__ = [
    "AgentGroup",
    "OutOfPlaceTanhNormal",
    "VmapCQLLoss",
    "VmapIQLLoss",
    "make_vmap_compatible",
]
