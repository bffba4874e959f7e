"""The kernel's parts (integrator, mass matrix, divergence threshold) and the adaptation."""

from __future__ import annotations

import functools

import pytest
import torch

from torchrl_misa.mcmc import (
    build_kernel,
    hmc_sample,
    init_state,
    simple_step_size_adaptation,
    value_and_grad,
)


def reflection(position, momentum, grad, step_size, num_steps, vg_fn, inv_mass=None):
    """(x, p) -> (-x, -p): an involution that preserves volume and, for an even
    density, the energy, so HMC with it must accept every move."""
    log_prob, grad = vg_fn(-position)
    return -position, -momentum, log_prob, grad


def test_kernel_uses_the_given_integrator():
    init = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    samples, info = hmc_sample(
        lambda x: -0.5 * x.pow(2).sum(-1),
        init,
        num_samples=4,
        num_burnin=0,
        kernel=build_kernel(integrator=reflection),
        generator=torch.Generator().manual_seed(0),
    )
    expected = torch.stack([-init, init, -init, init])
    assert torch.equal(samples, expected)
    assert (info["acceptance_rate"] == 1).all()


def test_diagonal_mass_matrix_is_a_change_of_variables():
    """HMC in x with M^-1 = diag(s^2) is HMC in z = x / s with unit mass.

    Both are fed the same draws; every transition must agree.
    """
    dt = torch.float64
    g = torch.Generator().manual_seed(1)
    s = torch.tensor([[0.2, 3.0, 1.0]], dtype=dt).expand(50, 3)
    mu = torch.tensor([0.5, -2.0, 1.0], dtype=dt)

    def log_prob(x):
        return (-0.5 * ((x - mu) / s).pow(2) - 0.1 * (x / s).pow(4)).sum(-1)

    kernel = build_kernel()
    vg_x = functools.partial(value_and_grad, log_prob)
    vg_z = functools.partial(value_and_grad, lambda z: log_prob(z * s))
    x0 = torch.randn(50, 3, generator=g, dtype=dt) * s
    state_x, state_z = init_state(x0, vg_x), init_state(x0 / s, vg_z)
    step = torch.tensor(0.7, dtype=dt)
    accepted = 0
    for _ in range(10):
        momentum = torch.randn(50, 3, generator=g, dtype=dt)
        log_u = torch.rand(50, generator=g, dtype=dt).log()
        state_x, info_x = kernel(
            state_x, step, 3, vg_x, momentum, log_u, inverse_mass_matrix=s**2
        )
        state_z, info_z = kernel(state_z, step, 3, vg_z, momentum, log_u)
        torch.testing.assert_close(info_x["accept_prob"], info_z["accept_prob"])
        assert torch.equal(info_x["accepted"], info_z["accepted"])
        torch.testing.assert_close(state_x["position"], state_z["position"] * s)
        accepted += info_x["accepted"].sum()
    assert 0.2 * 500 < accepted < 500  # moves were made, and some rejected


def test_adaptation_init_update_final():
    target, rate = 0.6, 0.25
    adaptation = simple_step_size_adaptation(target_accept=target, adaptation_rate=rate)
    accept = torch.tensor([[0.9, 0.5], [0.2, 0.3], [0.7, 0.7], [0.61, 0.6]])
    shared = adaptation.init(torch.tensor(2.0))
    per_chain = adaptation.init(torch.full((2, 1), 2.0))
    for a in accept:
        shared = adaptation.update(shared, a)
        per_chain = adaptation.update(per_chain, a)
    # Means 0.7, 0.25, 0.7, 0.605 > 0.6: up, down, up, up.
    assert adaptation.final(shared) == pytest.approx(2.0 * 1.25**2)
    # Chain 0: 0.9, 0.2, 0.7, 0.61 (up, down, up, up); chain 1: down, down, up, down.
    torch.testing.assert_close(
        adaptation.final(per_chain).squeeze(-1),
        torch.tensor([2.0 * 1.25**2, 2.0 / 1.25**2]),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_accept": 0.0}, "target_accept must lie in"),
        ({"target_accept": 1.0}, "target_accept must lie in"),
        ({"adaptation_rate": 0.0}, "adaptation_rate must lie in"),
        ({"adaptation_rate": 1.5}, "adaptation_rate must lie in"),
        ({"adaptation_rate": float("nan")}, "adaptation_rate must lie in"),
    ],
)
def test_adaptation_settings_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simple_step_size_adaptation(**kwargs)
    with pytest.raises(ValueError, match=match):  # and by the sampler
        hmc_sample(
            lambda x: -x.pow(2).sum(-1), torch.zeros(2, 2), num_samples=2, **kwargs
        )


def test_kernel_settings_checked():
    with pytest.raises(ValueError, match="divergence_threshold"):
        build_kernel(divergence_threshold=0.0)
    with pytest.raises(TypeError, match="integrator"):
        build_kernel(integrator=3)
    with pytest.raises(TypeError, match="build_kernel"):
        hmc_sample(
            lambda x: -x.pow(2).sum(-1),
            torch.zeros(2, 2),
            num_samples=2,
            kernel=lambda *args: args,
        )
