"""Chains that cannot move, or start where the density is zero, are handled or reported."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from torchrl_misa.mcmc import hmc_sample, sample_tilted_tanh_normal


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def half_gaussian(x):
    """A standard normal restricted to x0 > 0 (zero density elsewhere) times N(0, 1) in x1."""
    value = -0.5 * x.pow(2).sum(-1)
    return torch.where(x[..., 0] > 0, value, torch.full_like(value, -torch.inf))


def test_chains_started_at_zero_density_reach_the_target():
    # Every chain starts where the density is zero: the first finite proposal
    # must be accepted (its Metropolis ratio against a zero density is infinite).
    n = 4000
    samples, info = hmc_sample(
        half_gaussian,
        torch.tensor([-1.0, 0.0]).expand(n, 2),
        num_samples=5,
        num_burnin=40,
        num_adaptation_steps=0,  # the escape must not shrink the step first
        step_size=1.0,
        generator=gen(1),
    )
    assert info["num_nonfinite_chains"].sum() == 0
    x = samples[-1].double()  # one draw per independent chain
    assert (x[:, 0] > 0).all()
    # Half-normal: E[x0] = sqrt(2/pi), E[x0^2] = 1; N(0, 1) in x1.
    se_mean = math.sqrt(1 - 2 / math.pi) / math.sqrt(n)
    se_square = math.sqrt(2) / math.sqrt(n)  # x0^2 ~ chi^2_1, variance 2
    assert abs(x[:, 0].mean() - math.sqrt(2 / math.pi)) < 4 * se_mean
    assert abs(x[:, 0].pow(2).mean() - 1) < 4 * se_square
    assert abs(x[:, 1].mean()) < 4 / math.sqrt(n)


def unreachable(x):
    """Finite only for x0 > 50, far beyond what chains started at 0 can reach."""
    value = -0.5 * (x - 60).pow(2).sum(-1)
    return torch.where(x[..., 0] > 50, value, torch.full_like(value, -torch.inf))


def test_chains_that_never_leave_zero_density_raise():
    with pytest.raises(ValueError, match="2 of 4 chains were still at a point"):
        hmc_sample(
            unreachable,
            torch.tensor([[0.0, 0.0], [55.0, 60.0]]),
            num_samples=4,
            num_chains=2,
            generator=gen(),
        )


def test_chains_that_never_leave_zero_density_are_counted_without_validation():
    init = torch.tensor([[0.0, 0.0], [55.0, 60.0], [0.0, 1.0]])
    samples, info = hmc_sample(
        unreachable,
        init,
        num_samples=6,
        num_chains=3,
        generator=gen(),
        validate=False,
    )
    assert info["num_nonfinite_chains"].tolist() == [3, 0, 3]
    assert info["num_stuck_chains"][0] == 3 and info["num_stuck_chains"][2] == 3
    # Their "samples" are the start, repeated.
    assert (samples[:, [0, 2]] == init[[0, 2]]).all()
    assert (samples[:, 1] != init[1]).any()


def test_a_nan_gradient_at_the_start_counts_as_zero_density():
    # sqrt(x0) has an infinite gradient at 0 and is NaN below: chains started
    # at 0 must move into x0 > 0.
    def log_prob(x):
        return x[..., 0].sqrt() * 0.1 - 0.5 * x.pow(2).sum(-1)

    samples, info = hmc_sample(
        log_prob,
        torch.zeros(500, 2),
        num_samples=4,
        num_burnin=30,
        num_adaptation_steps=0,
        generator=gen(2),
    )
    assert info["num_nonfinite_chains"].sum() == 0
    assert (samples[..., 0] > 0).all()


def test_stuck_chains_are_counted():
    # No burn-in: a chain is stuck if every sample equals its start.
    init = torch.randn(300, 2, generator=gen(3))
    samples, info = hmc_sample(
        lambda x: -0.5 * x.pow(2).sum(-1),
        init,
        num_samples=3,
        num_burnin=0,
        step_size=2.5,  # accepts about a third of the moves
        generator=gen(4),
    )
    stuck = (samples == init).all(-1).all(0)
    assert 0 < stuck.sum() < 300  # some chains moved, some did not
    assert info["num_stuck_chains"].tolist() == stuck.long().tolist()


def test_warns_when_no_chain_moves():
    # A step of 1000 on a unit Gaussian: every proposal is rejected.
    kwargs = {
        "num_samples": 5,
        "num_burnin": 2,
        "num_adaptation_steps": 0,
        "step_size": 1e3,
    }
    with pytest.warns(RuntimeWarning, match="no chain moved in the 5 transitions"):
        _, info = hmc_sample(
            lambda x: -0.5 * x.pow(2).sum(-1), torch.zeros(50, 2), **kwargs
        )
    assert (info["num_stuck_chains"] == 1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is checked without validation
        hmc_sample(
            lambda x: -0.5 * x.pow(2).sum(-1),
            torch.zeros(50, 2),
            validate=False,
            **kwargs,
        )


def point_mass(x):
    """Finite only at the origin: every move is rejected, the step shrinks."""
    value = -x.pow(2).sum(-1)
    return torch.where((x == 0).all(-1), value, torch.full_like(value, -torch.inf))


def flat(x):
    """A constant density, even at infinity: every move is accepted, the step grows."""
    return 0 * x.clamp(-1, 1).sum(-1)


@pytest.mark.parametrize(
    "log_prob, step_size, n, grow",
    [(point_mass, 1.0, 200, False), (flat, 3e38, 1, True)],
)
def test_warns_when_the_step_size_underflows_or_overflows(log_prob, step_size, n, grow):
    rate = 0.9
    expected = torch.tensor(step_size)  # the adaptation rule, step by step in float32
    for _ in range(n):
        expected = expected * (1 + rate) if grow else expected / (1 + rate)
    assert not torch.isfinite(expected) if grow else expected < 1e-38
    with pytest.warns(RuntimeWarning, match="underflowed .* or overflowed"):
        _, info = hmc_sample(
            log_prob,
            torch.zeros(4, 2),
            num_samples=2,
            num_burnin=n,
            num_adaptation_steps=n,
            step_size=step_size,
            adaptation_rate=rate,
            generator=gen(),
        )
    assert (info["step_size"] == expected).all()


@pytest.mark.parametrize(
    "log_prob",
    [
        lambda x: torch.zeros(x.shape[:-1]),
        lambda x: -x.detach().pow(2).sum(-1),
        lambda x: torch.ones(x.shape[:-1]) + 0 * x.sum(-1).detach(),
    ],
)
@pytest.mark.parametrize("compile", [False, True])
def test_log_density_must_depend_on_the_position(log_prob, compile):
    with pytest.raises(ValueError, match="does not depend on its input"):
        hmc_sample(log_prob, torch.zeros(3, 2), num_samples=2, compile=compile)


def test_tilted_sampler_reports_a_critic_that_is_nan_at_the_start():
    # A critic that is NaN at every action: no chain can ever move.
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="still at a point"):
        sample_tilted_tanh_normal(
            lambda a: a.sum(-1) * float("nan"), z, z + 1, z, num_samples=2
        )
