"""Keep the true next observation of a D4RL transition cut by a time limit.

The bug (TorchRL 0.14.1): after conversion, ``D4RLExperienceReplay.__init__``
sets ``("next", "observation")`` to zeros wherever ``("next", "done")``. A
terminal next state is never used (no bootstrap), but ``done`` also holds the
time-limit cuts (``truncated``), whose TD targets bootstrap from the next
state: with zeros there, they bootstrap from a state that never happened. A
file with ``next_observations`` holds that state.

The fix: only terminal rows have an unknown next observation when the file
stores ``next_observations``; without it every episode end does
(:func:`unknown_next_observation`). In TorchRL itself the zeroing in
``__init__`` would use that mask.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data.datasets.d4rl import D4RLExperienceReplay


def unknown_next_observation(
    data: TensorDictBase, *, has_next_observations: bool
) -> torch.Tensor:
    """Rows (``[N]`` bool) whose ``("next", "observation")`` is not in the file.

    Args:
        data: converted transitions, with ``("next", "terminated")`` and
            ``("next", "done")`` of shape ``[N, 1]``.
        has_next_observations: the file stores ``next_observations``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"next": {"terminated": torch.tensor([[True], [False], [False]]),
        ...                             "done": torch.tensor([[True], [True], [False]])}}, [3])
        >>> unknown_next_observation(data, has_next_observations=True)
        tensor([ True, False, False])
        >>> unknown_next_observation(data, has_next_observations=False)
        tensor([ True,  True, False])
    """
    key = "terminated" if has_next_observations else "done"
    return data["next", key].reshape(-1)


class D4RLTimeLimitExperienceReplay(D4RLExperienceReplay):
    """TorchRL's :class:`~torchrl.data.datasets.D4RLExperienceReplay`, with true next states at time limits.

    Same arguments as the parent class. When this call converts the file (no
    cache yet), the next observations of time-limit rows are noted during the
    conversion and written back into the storage once the parent has zeroed
    them. A cache written by the stock class keeps its zeros (pass
    ``download="force"`` to convert again).

    Raises:
        ValueError: ``split_trajs=True`` (the rows are written back by their
            position in the flat storage).
    """

    def __init__(self, *args, split_trajs: bool = False, **kwargs):
        if split_trajs:
            raise ValueError(
                f"{type(self).__name__} supports split_trajs=False only; split the "
                "transitions after loading (torchrl.collectors.utils.split_trajectories)."
            )
        self._time_limit_rows = None  # (index, next observations), set by a conversion
        super().__init__(*args, split_trajs=False, **kwargs)
        if self._time_limit_rows is not None:
            index, next_obs = self._time_limit_rows
            self._time_limit_rows = None
            if index.numel():
                rows = self.storage.get(index)
                rows.set(("next", "observation"), next_obs)
                self.storage[index] = rows  # written through to the memory-mapped cache

    def _process_data_from_env(self, dataset, env=None):
        has_next = "next_observations" in dataset.keys()
        out = super()._process_data_from_env(dataset, env)
        if has_next:
            done = out["next", "done"].reshape(-1)
            kept = done & ~unknown_next_observation(out, has_next_observations=True)
            index = kept.nonzero().squeeze(-1)
            self._time_limit_rows = (index, out["next", "observation"][index].clone())
        return out
