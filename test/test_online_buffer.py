"""GroupOfflineToOnlineReplayBuffer: the batch mix, agents' own buffers, checkpoints."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.transforms import RewardScaling

from torchrl_misa.data.online_buffer import GroupOfflineToOnlineReplayBuffer


def offline_buffer(n: int = 500) -> ReplayBuffer:
    """Offline rows tagged ``source = 0``, ``row`` their index."""
    rb = ReplayBuffer(storage=LazyTensorStorage(n))
    rb.extend(
        TensorDict(
            {
                "source": torch.zeros(n, 1),
                "row": torch.arange(n, dtype=torch.float32).unsqueeze(-1),
                ("next", "reward"): torch.ones(n, 1),
            },
            [n],
        )
    )
    return rb


def online_rows(groups: int, n: int) -> TensorDict:
    """Agent ``i``'s rows tagged ``source = i + 1``; an extra key offline rows lack."""
    source = torch.arange(1, groups + 1, dtype=torch.float32).view(groups, 1, 1)
    return TensorDict(
        {
            "source": source.expand(groups, n, 1).clone(),
            "row": torch.arange(n, dtype=torch.float32).expand(groups, n).unsqueeze(-1),
            ("next", "reward"): torch.ones(groups, n, 1),
            ("collector", "traj_ids"): torch.zeros(groups, n, dtype=torch.long),
        },
        [groups, n],
    )


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.7])
def test_every_agents_rows_hold_the_fraction(groups, fraction):
    rows = 10
    rb = GroupOfflineToOnlineReplayBuffer(
        offline_buffer(),
        online_capacity=100,
        offline_fraction=fraction,
        batch_size=rows * groups,
        num_groups=groups,
    )
    rb.extend(online_rows(groups, 40) if groups > 1 else online_rows(1, 40)[0])
    expected_offline = round(fraction * rows)  # TorchRL's rule, per agent
    for _ in range(5):
        batch = rb.sample()
        assert batch.batch_size == ((groups, rows) if groups > 1 else (rows,))
        source = batch["source"].reshape(groups, rows)
        for i in range(groups):
            assert int((source[i] == 0).sum()) == expected_offline
            # the online rows are this agent's own
            assert int((source[i] == i + 1).sum()) == rows - expected_offline
    assert "collector" not in batch.keys()  # only the offline samples' keys


def test_before_any_online_data_every_row_is_offline():
    rb = GroupOfflineToOnlineReplayBuffer(
        offline_buffer(), online_capacity=10, batch_size=8, num_groups=2
    )
    batch = rb.sample()
    assert batch.batch_size == (2, 4)
    assert (batch["source"] == 0).all()


def test_online_transform_processes_online_rows_only():
    """RewardScaling(loc=1, scale=2): r' = 2 r + 1 on the online rows (r = 1 -> 3)."""
    rb = GroupOfflineToOnlineReplayBuffer(
        offline_buffer(),
        online_capacity=50,
        batch_size=20,
        online_transform=[RewardScaling(1.0, 2.0, in_keys=[("next", "reward")])],
    )
    rb.extend(online_rows(1, 30)[0])
    batch = rb.sample()
    reward = batch["next", "reward"].squeeze(-1)
    online = batch["source"].squeeze(-1) == 1
    assert online.sum() == 10
    assert torch.equal(reward[online], torch.full((10,), 3.0))
    assert torch.equal(reward[~online], torch.ones(10))


def test_state_dict_restores_buffers_and_the_next_samples():
    def make():
        return GroupOfflineToOnlineReplayBuffer(
            offline_buffer(), online_capacity=64, batch_size=12, num_groups=2
        )

    rb = make()
    rb.extend(online_rows(2, 40))
    state = rb.state_dict()
    restored = make()
    restored.load_state_dict(state)
    assert len(restored) == len(rb) == 500 + 80
    torch.manual_seed(7)
    expected = rb.sample()
    torch.manual_seed(7)
    assert torch.equal(restored.sample()["row"], expected["row"])
    # both keep filling from the same cursor
    for buffer in (rb, restored):
        buffer.extend(online_rows(2, 30))
    for a, b in zip(rb.online_buffers, restored.online_buffers):
        assert torch.equal(a.storage[:]["row"], b.storage[:]["row"])
    with pytest.raises(ValueError, match="2 online buffers saved"):
        GroupOfflineToOnlineReplayBuffer(
            offline_buffer(), online_capacity=64, batch_size=12, num_groups=3
        ).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"offline_fraction": 1.0}, r"in \[0, 1\)"),
        ({"offline_fraction": -0.1}, r"in \[0, 1\)"),
        ({"batch_size": 10, "num_groups": 3}, "multiple of num_groups"),
        ({"online_capacity": 0}, "online_capacity must be a positive integer"),
        ({"num_groups": 0}, "num_groups must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"online_capacity": 10, "batch_size": 12, **kwargs}
    with pytest.raises(ValueError, match=match):
        GroupOfflineToOnlineReplayBuffer(offline_buffer(), **args)


def test_group_extend_needs_a_row_per_agent():
    rb = GroupOfflineToOnlineReplayBuffer(
        offline_buffer(), online_capacity=10, batch_size=12, num_groups=3
    )
    with pytest.raises(ValueError, match=r"num_groups=3"):
        rb.extend(online_rows(2, 5))
