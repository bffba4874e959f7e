"""TorchRL's offline-to-online replay buffer, with agent groups and checkpoints."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import OfflineToOnlineReplayBuffer
from torchrl.envs.transforms import Transform


class GroupOfflineToOnlineReplayBuffer(OfflineToOnlineReplayBuffer):
    """:class:`~torchrl.data.OfflineToOnlineReplayBuffer` for one agent or a group of them.

    Each :meth:`sample` draws exactly ``round(offline_fraction * n)`` of an
    agent's ``n`` transitions from the offline dataset and the rest from the
    agent's own online buffer, as TorchRL's buffer does for one agent. On top
    of it:

    * ``num_groups`` independent online buffers (one per agent of a group):
      :meth:`extend` takes ``[num_groups, ...]`` data, row ``i`` going to
      agent ``i``'s buffer, and :meth:`sample` returns
      ``[num_groups, batch_size // num_groups]``, every row mixed in the
      configured proportion (a flat sample would give agent 0 only offline
      rows). With ``num_groups=1`` the shapes are TorchRL's.
    * ``offline_fraction=0`` (online data only, e.g. a control trained from
      scratch), reached through TorchRL's own :meth:`anneal`: its constructor
      takes ``(0, 1)``.
    * ``online_transform``: the read-side processing of online samples (the
      offline dataset keeps its own); online samples are restricted to the
      keys the offline samples have.
    * :meth:`state_dict` / :meth:`load_state_dict` of the online buffers, for
      checkpoints.

    As in TorchRL's buffer, while an online buffer is empty every row comes
    from the offline dataset.

    Args:
        offline_dataset (ReplayBuffer): the offline transitions (processed on
            read by its own transforms).

    Keyword Args:
        online_capacity (int): transitions each online buffer keeps.
        offline_fraction (float): share of each agent's rows drawn from the
            offline dataset, in ``[0, 1)``. Default: ``0.5`` (RLPD's symmetric
            sampling).
        batch_size (int): rows per :meth:`sample`, all agents together; a
            multiple of ``num_groups``.
        num_groups (int): online buffers (agents). Default: ``1``.
        online_transform (sequence of Transform, optional): appended to every
            online buffer.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> offline = ReplayBuffer(storage=LazyTensorStorage(100))
        >>> _ = offline.extend(TensorDict({"x": torch.zeros(100, 1)}, [100]))
        >>> rb = GroupOfflineToOnlineReplayBuffer(
        ...     offline, online_capacity=50, offline_fraction=0.25, batch_size=16,
        ...     num_groups=2)
        >>> rb.extend(TensorDict({"x": torch.ones(2, 10, 1)}, [2, 10]))
        >>> batch = rb.sample()
        >>> batch.batch_size, batch["x"].sum(1).flatten().tolist()
        (torch.Size([2, 8]), [6.0, 6.0])
    """

    def __init__(
        self,
        offline_dataset: ReplayBuffer,
        *,
        online_capacity: int,
        offline_fraction: float = 0.5,
        batch_size: int,
        num_groups: int = 1,
        online_transform: Sequence[Transform] = (),
    ) -> None:
        for name, value in (
            ("online_capacity", online_capacity),
            ("batch_size", batch_size),
            ("num_groups", num_groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if batch_size % num_groups:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of num_groups="
                f"{num_groups} (each agent gets batch_size // num_groups rows)."
            )
        if not 0.0 <= offline_fraction < 1.0:
            raise ValueError(
                f"offline_fraction must lie in [0, 1), got {offline_fraction}; "
                "1 would never read the online data: train offline instead."
            )
        super().__init__(
            offline_dataset,
            online_capacity=online_capacity,
            offline_fraction=offline_fraction or 0.5,
            batch_size=batch_size,
        )
        if offline_fraction == 0.0:
            self.anneal(1, 1)  # TorchRL's constructor takes (0, 1); this reaches 0
        self.num_groups = num_groups
        self.batch_size = batch_size
        self.online_buffers = [self.online_buffer] + [
            ReplayBuffer(storage=LazyTensorStorage(online_capacity))
            for _ in range(num_groups - 1)
        ]
        for buffer in self.online_buffers:
            for transform in online_transform:
                buffer.append_transform(transform.clone())
        self._keys = None

    def _offline_keys(self) -> list:
        if self._keys is None:
            # the stored rows, not a sample: reading keys must not draw random numbers
            probe = self.offline_buffer.storage[:1]
            self._keys = list(probe.keys(include_nested=True, leaves_only=True))
        return self._keys

    def extend(self, data: TensorDictBase) -> None:
        """Adds online transitions: ``[num_groups, ...]``, row ``i`` to agent ``i``.

        With one group any shape is taken (it is flattened). Entries the
        offline samples lack (e.g. a collector's ``("collector", ...)``) are
        dropped.
        """
        data = data.select(*self._offline_keys(), strict=False)
        if self.num_groups == 1:
            self.online_buffer.extend(data.reshape(-1))
            return
        if data.batch_dims < 1 or data.batch_size[0] != self.num_groups:
            raise ValueError(
                f"extend: expected data of shape [num_groups={self.num_groups}, ...], "
                f"got {list(data.batch_size)}."
            )
        for buffer, rows in zip(self.online_buffers, data.unbind(0)):
            buffer.extend(rows.reshape(-1))

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """``[batch_size]`` rows (``[num_groups, batch_size // num_groups]`` for a group)."""
        batch_size = self.batch_size if batch_size is None else batch_size
        groups = self.num_groups
        if batch_size % groups:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of num_groups={groups}."
            )
        rows = batch_size // groups
        n_offline = round(self.offline_fraction * rows)
        if n_offline == rows or any(len(b) == 0 for b in self.online_buffers):
            return self._grouped(self._sample_offline(batch_size))
        online = torch.stack([b.sample(rows - n_offline) for b in self.online_buffers])
        if n_offline:
            offline = self._sample_offline(groups * n_offline)
            offline = offline.select(*online.keys(True, True)).reshape(groups, -1)
            online = torch.cat([offline, online], dim=1)
        return online if groups > 1 else online.squeeze(0)

    def _sample_offline(self, rows: int) -> TensorDictBase:
        with warnings.catch_warnings():
            # a dataset built with another batch size: the size asked for is right
            warnings.filterwarnings("ignore", "Got conflicting batch_sizes")
            return self.offline_buffer.sample(rows)

    def _grouped(self, batch: TensorDictBase) -> TensorDictBase:
        return batch.reshape(self.num_groups, -1) if self.num_groups > 1 else batch

    def __len__(self) -> int:
        return len(self.offline_buffer) + sum(len(b) for b in self.online_buffers)

    def state_dict(self) -> dict:
        """The online buffers' content and cursors (the offline dataset is not saved)."""
        return {"online": [b.state_dict() for b in self.online_buffers]}

    def load_state_dict(self, state_dict: dict) -> None:
        online = state_dict["online"]
        if len(online) != self.num_groups:
            raise ValueError(
                f"load_state_dict: {len(online)} online buffers saved, this buffer "
                f"has {self.num_groups}."
            )
        for buffer, state in zip(self.online_buffers, online):
            buffer.load_state_dict(state)
