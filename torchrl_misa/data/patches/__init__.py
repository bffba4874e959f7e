"""Fixes to TorchRL 0.14.1's offline dataset classes, one per module.

Each module is self-contained (it imports only TorchRL, tensordict, torch,
numpy and the dataset's own package) and can be proposed to TorchRL on its
own: a function with the fix, and a subclass of the stock class that applies
it, so that the stock class and the fixed one can be compared side by side.

* :mod:`.d4rl_last_transition`: D4RL files with ``next_observations`` lose
  their last transition.
* :mod:`.d4rl_time_limit`: the next observation of a transition cut by a
  time limit is stored as zeros, although the file holds it.
* :mod:`.minari_fill`: the first conversion of a Minari dataset stores zeros
  instead of the data.

The loaders of :mod:`torchrl_misa.data` apply the three fixes.
"""

from torchrl_misa.data.patches.d4rl_last_transition import (
    D4RLLastTransitionExperienceReplay,
    repeat_last_row,
)
from torchrl_misa.data.patches.d4rl_time_limit import (
    D4RLTimeLimitExperienceReplay,
    unknown_next_observation,
)
from torchrl_misa.data.patches.minari_fill import (
    fill_from_minari,
    MinariFilledExperienceReplay,
)

__all__ = [
    "D4RLLastTransitionExperienceReplay",
    "D4RLTimeLimitExperienceReplay",
    "MinariFilledExperienceReplay",
    "fill_from_minari",
    "repeat_last_row",
    "unknown_next_observation",
]
