"""Keep the last transition of a D4RL file that stores ``next_observations``.

The bug (TorchRL 0.14.1): ``D4RLExperienceReplay._process_data_from_env``
builds transitions by pairing row ``t`` with row ``t + 1`` and drops the last
row. With a ``next_observations`` column (every D4RL MuJoCo v2 file) each row
is already a complete transition, the last one included, and the pairing only
takes ``info`` from row ``t + 1``: the last transition of the file is lost.

The fix: with ``next_observations``, hand the converter the rows plus a copy
of the last one; the copy is what it drops. (In TorchRL itself the converter
would keep all rows when ``next_observations`` is present.)
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data.datasets.d4rl import D4RLExperienceReplay


def repeat_last_row(dataset: TensorDictBase) -> TensorDictBase:
    """D4RL's raw rows (no ``metadata``) with the last row appended once more.

    Rows without ``next_observations`` are returned unchanged: there the next
    observation of the last row is unknown, and dropping the row is right.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> rows = TensorDict(observations=torch.arange(3.0)[:, None],
        ...                   next_observations=torch.arange(1.0, 4.0)[:, None], batch_size=[3])
        >>> repeat_last_row(rows)["next_observations"].squeeze(-1)
        tensor([1., 2., 3., 3.])
    """
    if "next_observations" not in dataset.keys():
        return dataset
    if dataset.batch_dims == 0:  # read without a batch size: rows are dim 0
        dataset = dataset.copy().auto_batch_size_(batch_dims=1)
    return torch.cat([dataset, dataset[-1:]], 0)


class D4RLLastTransitionExperienceReplay(D4RLExperienceReplay):
    """TorchRL's :class:`~torchrl.data.datasets.D4RLExperienceReplay`, keeping the last transition.

    Same arguments as the parent class; only the conversion differs, and only
    for files with ``next_observations``.
    """

    def _process_data_from_env(self, dataset, env=None):
        if "next_observations" not in dataset.keys():
            return super()._process_data_from_env(dataset, env)
        metadata = dataset.get("metadata") if "metadata" in dataset.keys() else None
        rows = repeat_last_row(dataset.exclude("metadata"))
        out = super()._process_data_from_env(rows, env)
        if metadata is not None:  # the parent reads it from the rows it was given
            self.metadata = metadata
        return out
