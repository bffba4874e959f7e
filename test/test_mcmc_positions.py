"""Positions given as a TensorDict of tensors."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_misa.mcmc import hmc_sample

B = 400


def td_log_prob(td):
    """a ~ N(1, I_2), ("b", "c") ~ N(0, 4 I_3), as a TensorDict function."""
    a, c = td["a"], td["b", "c"]
    assert td.batch_size == a.shape[:-1] == c.shape[:-2]
    return -0.5 * (a - 1).pow(2).sum(-1) - 0.5 * (c / 2).pow(2).sum((-2, -1))


def flat_log_prob(x):
    """The same density over the columns [a, c] of one tensor."""
    a, c = x[..., :2], x[..., 2:]
    return -0.5 * (a - 1).pow(2).sum(-1) - 0.5 * (c / 2).pow(2).sum(-1)


def td_init():
    return TensorDict({"a": torch.zeros(B, 2), "b": {"c": torch.zeros(B, 3, 1)}}, [B])


@pytest.mark.parametrize("use_scale", [False, True])
def test_tensordict_position_matches_the_flat_tensor(use_scale):
    kwargs = {"num_samples": 6, "num_chains": 2, "num_burnin": 10}
    td_scale = TensorDict({"a": torch.ones(2), "b": {"c": torch.full((3, 1), 2.0)}})
    samples, info = hmc_sample(
        td_log_prob,
        td_init(),
        scale=td_scale if use_scale else None,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    flat_scale = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]).expand(B, 5)
    expected, expected_info = hmc_sample(
        flat_log_prob,
        torch.zeros(B, 5),
        scale=flat_scale if use_scale else None,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert samples.batch_size == (6, B)
    assert samples["b", "c"].shape == (6, B, 3, 1)
    torch.testing.assert_close(samples["a"], expected[..., :2])
    torch.testing.assert_close(samples["b", "c"].squeeze(-1), expected[..., 2:])
    assert (info == expected_info).all()
    # And the draws follow the target: a ~ N(1, 1), c ~ N(0, 4).
    assert (samples["a"].mean((0, 1)) - 1).abs().max() < 0.1
    assert (samples["b", "c"].std((0, 1)).squeeze(-1) - 2).abs().max() < 0.2


@pytest.mark.parametrize(
    "init, scale, match",
    [
        (
            TensorDict(
                {"a": torch.zeros(3, 2), "b": torch.zeros(3, dtype=torch.float64)}, [3]
            ),
            None,
            "share one dtype",
        ),
        (
            TensorDict({"a": torch.zeros(3, 2, dtype=torch.long)}, [3]),
            None,
            "floating point",
        ),
        (TensorDict({}, [3]), None, "without entries"),
        (
            TensorDict({"a": torch.zeros(3, 2)}, [3]),
            torch.ones(3, 2),
            "TensorDict with the entries",
        ),
        (
            TensorDict({"a": torch.zeros(3, 2), "b": torch.zeros(3, 1)}, [3]),
            TensorDict({"a": torch.ones(3, 2)}, [3]),
            "TensorDict with the entries",
        ),
        (
            TensorDict({"a": torch.zeros(3, 2)}, [3]),
            TensorDict({"a": torch.ones(3, 4)}, [3]),
            "does not broadcast",
        ),
        (
            torch.zeros(3, 2),
            TensorDict({"a": torch.ones(3, 2)}, [3]),
            "must be a tensor",
        ),
        ([0.0, 1.0], None, "TensorDict of tensors"),
    ],
)
def test_bad_positions(init, scale, match):
    with pytest.raises(ValueError, match=match):
        hmc_sample(lambda x: -x.sum(-1), init, num_samples=2, scale=scale)
