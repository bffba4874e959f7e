"""``validate=False`` skips every value check that reads a tensor back to the host.

Host reads are counted with a dispatch mode that records
``aten._local_scalar_dense`` (what ``bool(tensor)``, ``.item()`` and
``.tolist()`` of a one-element tensor call): on an accelerator each is a sync.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchrl_misa.mcmc import hmc_sample, sample_tilted_tanh_normal


class HostReads(TorchDispatchMode):
    """Counts tensor-to-host scalar reads made inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def tilted(validate, **kwargs):
    loc = torch.linspace(-1, 1, 8).reshape(4, 2)
    scale = torch.full((4, 2), 0.5)
    return sample_tilted_tanh_normal(
        lambda a: -((a - 0.3) ** 2).sum(-1),
        loc,
        scale,
        torch.tanh(loc),
        num_samples=4,
        generator=torch.Generator().manual_seed(0),
        validate=validate,
        **kwargs,
    )


@pytest.mark.parametrize("mode", ["whitened", "pretanh", "authors"])
# In action space with a step of 1 no chain moves, which validation warns about.
@pytest.mark.filterwarnings("ignore:no chain moved:RuntimeWarning")
def test_no_host_reads_without_validation(mode):
    with HostReads() as on:
        expected, info_on = tilted(True, mode=mode)
    with HostReads() as off:
        actions, info_off = tilted(False, mode=mode)
    assert on.count > 0  # the probe sees the checks when they run
    assert off.count == 0
    # The checks only read: the draws are the same.
    torch.testing.assert_close(actions, expected, rtol=0, atol=0)
    assert (info_on == info_off).all()


def test_tensor_step_size_checked_only_when_validating():
    step = torch.tensor(0.5)
    with HostReads() as off:
        hmc_sample(
            lambda x: -(x**2).sum(-1),
            torch.zeros(3, 2),
            num_samples=2,
            step_size=step,
            validate=False,
        )
    assert off.count == 0
    with pytest.raises(ValueError, match="step_size"):
        hmc_sample(
            lambda x: -(x**2).sum(-1),
            torch.zeros(3, 2),
            num_samples=2,
            step_size=torch.tensor(-0.5),
        )


def test_shapes_checked_without_validation():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="shape"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z[:2] + 1, z, validate=False)
    with pytest.raises(ValueError, match="floating point"):
        hmc_sample(
            lambda x: -x.sum(-1),
            torch.zeros(3, 2, dtype=torch.long),
            num_samples=2,
            validate=False,
        )
    with pytest.raises(ValueError, match="log_prob_fn"):
        hmc_sample(lambda x: -x, z, num_samples=2, validate=False)


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("loc", float("nan"), "loc contains non-finite"),
        ("scale", 0.0, "scale must be strictly positive"),
        ("init_action", 1.5, r"\[-1, 1\]"),
    ],
)
def test_values_checked_when_validating(name, bad, match):
    args = {
        "loc": torch.zeros(3, 2),
        "scale": torch.ones(3, 2),
        "init_action": torch.zeros(3, 2),
    }
    args[name][1, 0] = bad
    with pytest.raises(ValueError, match=match):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), num_samples=2, **args)
