"""HMC sampler tests against analytic distributions and quadrature."""

import math

import pytest
import torch

from torchrl_misa.mcmc import hmc_sample, sample_tilted_tanh_normal


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_moments():
    # N(m, S) with S = L L^T, correlated and with scales from 0.3 to 2.
    m = torch.tensor([1.0, -2.0, 0.5])
    L = torch.tensor([[2.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.3]])
    cov = L @ L.T
    prec = torch.linalg.inv(cov)

    def log_prob(x):
        r = x - m
        return -0.5 * torch.einsum("...i,ij,...j->...", r, prec, r)

    n_chains = 4000
    samples, info = hmc_sample(
        log_prob,
        torch.zeros(n_chains, 3),
        num_samples=10,
        num_burnin=60,
        num_leapfrog=4,
        step_size=0.3,
        generator=gen(),
    )
    assert samples.shape == (10, n_chains, 3)
    x = samples.reshape(-1, 3)
    # Standard error of the mean, inflated for autocorrelation within chains.
    se = cov.diagonal().sqrt() / math.sqrt(n_chains) * 3
    assert ((x.mean(0) - m).abs() < 4 * se).all(), (x.mean(0), m)
    emp_cov = torch.cov(x.T)
    assert torch.allclose(emp_cov, cov, atol=0.1 * cov.diagonal().max()), emp_cov


def test_adaptation_reaches_target_acceptance():
    def log_prob(x):  # isotropic, scale 0.1: a step of 1.0 accepts almost nothing
        return -0.5 * (x / 0.1).pow(2).sum(-1)

    _, info = hmc_sample(
        log_prob,
        torch.zeros(2000, 2),
        num_samples=50,
        num_burnin=80,
        num_adaptation_steps=80,
        step_size=1.0,
        adaptation_rate=0.05,
        generator=gen(1),
    )
    rate = info["acceptance_rate"].mean().item()
    assert 0.6 < rate < 0.9, rate  # 1.0 without adaptation: ~0
    assert info["step_size"].mean() < 0.5


def _gaussian_tilt_exact(loc, scale, c, m):
    """N(u; loc, scale) * exp(-c/2 (u - m)^2) is N(mean, var) with these moments."""
    prec = 1 / scale**2 + c
    return (loc / scale**2 + c * m) / prec, 1 / prec


@pytest.mark.parametrize("mode", ["whitened", "pretanh"])
def test_tilted_sampler_gaussian_closed_form(mode):
    n, c, m = 2000, 2.0, 0.3
    g = gen(2)
    loc = torch.randn(n, 1, generator=g) * 0.5
    scale = torch.rand(n, 1, generator=g) * 0.8 + 0.2

    def w(a):  # quadratic in the pre-tanh action
        return -0.5 * c * (torch.atanh(a) - m).pow(2).sum(-1)

    init = torch.tanh(loc)
    actions, info = sample_tilted_tanh_normal(
        w, loc, scale, init, num_samples=20, num_burnin=30, generator=g, mode=mode
    )
    u = torch.atanh(actions)
    mean, var = _gaussian_tilt_exact(loc, scale, c, m)
    z = (u - mean) / var.sqrt()  # standard normal under the exact target
    assert z.mean().abs() < 0.05, z.mean()
    assert (z.var() - 1).abs() < 0.08, z.var()
    assert info["acceptance_rate"].mean() > 0.5


def test_minus_inf_half_space_gives_no_nan():
    def log_prob(x):
        value = -0.5 * x.pow(2).sum(-1)
        return torch.where(x[..., 0] > 0, value, torch.full_like(value, -torch.inf))

    samples, info = hmc_sample(
        log_prob,
        torch.full((500, 2), 0.5),
        num_samples=20,
        num_burnin=10,
        step_size=1.5,
        generator=gen(3),
    )
    assert torch.isfinite(samples).all()
    assert (samples[..., 0] > 0).all()
    assert info["num_divergent"].sum() > 0  # proposals into x0 <= 0 were counted
    # The half-normal has mean sqrt(2/pi) along x0.
    assert (samples[..., 0].mean() - math.sqrt(2 / math.pi)).abs() < 0.1


def test_nan_log_density_is_rejected():
    log_prob = lambda x: torch.where(  # noqa: E731
        x[..., 0] > 1.0, torch.full_like(x[..., 0], float("nan")), -x.pow(2).sum(-1)
    )
    samples, _ = hmc_sample(
        log_prob, torch.zeros(200, 1), num_samples=10, generator=gen(4)
    )
    assert torch.isfinite(samples).all() and (samples <= 1.0).all()


@pytest.mark.parametrize("batch", [(6,), (2, 3)])
def test_shapes_chains_and_thin(batch):
    log_prob = lambda x: -x.pow(2).sum(-1)  # noqa: E731
    seen = []

    def recording(x):
        seen.append(x.shape)
        return log_prob(x)

    samples, info = hmc_sample(
        recording,
        torch.zeros(*batch, 4),
        num_samples=6,
        num_chains=3,
        thin=2,
        num_burnin=2,
        generator=gen(),
    )
    assert samples.shape == (6, *batch, 4)
    assert seen[0] == (3, *batch, 4)
    assert info.batch_size == torch.Size(batch)
    assert set(info.keys()) >= {"acceptance_rate", "step_size", "num_divergent"}
    # Chains are independent: chain 0's and chain 1's samples differ.
    assert not torch.equal(samples[0], samples[2])


def test_gradients_only_wrt_position():
    net = torch.nn.Linear(2, 1)
    outer = net(torch.ones(1, 2)).sum()  # the caller's graph, alive
    samples, _ = hmc_sample(
        lambda x: -x.pow(2).sum(-1) + net(x).squeeze(-1),
        torch.zeros(10, 2),
        num_samples=4,
        generator=gen(),
    )
    assert net.weight.grad is None and not samples.requires_grad
    outer.backward()  # the caller's graph was left intact
    assert net.weight.grad is not None
    with torch.no_grad():  # works under no_grad too
        samples, _ = hmc_sample(
            lambda x: -x.pow(2).sum(-1),
            torch.zeros(3, 2),
            num_samples=2,
            generator=gen(),
        )
    assert torch.isfinite(samples).all()


def test_preconditioner_scale():
    # A badly scaled Gaussian is easy once whitened by its own scale.
    s = torch.tensor([0.01, 100.0])
    log_prob = lambda x: -0.5 * (x / s).pow(2).sum(-1)  # noqa: E731
    samples, info = hmc_sample(
        log_prob,
        torch.zeros(2000, 2),
        num_samples=10,
        num_burnin=10,
        scale=s.expand(2000, 2),
        generator=gen(5),
    )
    assert torch.allclose(samples.reshape(-1, 2).std(0) / s, torch.ones(2), atol=0.08)
    assert info["acceptance_rate"].mean() > 0.7


def _bumpy_setup(n_states=512):
    s = torch.linspace(-2, 2, n_states).unsqueeze(-1)
    loc, scale = 0.4 * s, 0.5 + 0.25 * torch.cos(s)

    def q(obs, a):
        return (3 * torch.sin(2 * a + obs) - 2 * a.pow(2)).squeeze(-1)

    grid = torch.linspace(-6, 6, 6001, dtype=torch.float64)
    ta = torch.tanh(grid)
    log_dens = (
        -0.5 * ((grid - loc.double()) / scale.double()).pow(2)
        + 3 * torch.sin(2 * ta + s.double())
        - 2 * ta.pow(2)
    )  # log N(u; loc, scale) + Q(s, tanh u), the same Q written out
    p = (log_dens - log_dens.max(-1, keepdim=True).values).exp()
    p = p / p.sum(-1, keepdim=True)
    mean = (p * grid).sum(-1)
    sd = (p * (grid - mean.unsqueeze(-1)).pow(2)).sum(-1).sqrt()
    return s, loc, scale, q, grid, p, mean, sd


def test_bumpy_misa_target_bias_matches_exact_draws():
    s, loc, scale, q, grid, p, mean, sd = _bumpy_setup()
    g = gen(6)
    k = 50
    init = torch.tanh(
        loc + scale * torch.randn(loc.shape, generator=g)
    )  # "dataset" actions

    def w(a):
        return q(s.expand(*a.shape[:-1], 1), a)

    rates = {}
    bias = {}
    for mode in ("whitened", "pretanh", "authors"):
        actions, info = sample_tilted_tanh_normal(
            w,
            loc,
            scale,
            init,
            num_samples=k,
            num_burnin=5,
            num_leapfrog=2,
            generator=g,
            mode=mode,
        )
        u = torch.atanh(actions.double()).squeeze(-1)  # [k, n]
        bias[mode] = ((u.mean(0) - mean).abs() / sd).mean().item()
        rates[mode] = info["acceptance_rate"].mean().item()
    # 50 exact independent draws per state by inverse CDF on the grid.
    cdf = p.cumsum(-1)
    uniform = torch.rand(len(s), k, generator=g, dtype=torch.float64)
    exact = grid[torch.searchsorted(cdf, uniform).clamp(max=len(grid) - 1)]
    bias_exact = ((exact.mean(-1) - mean).abs() / sd).mean().item()
    report = (
        f"bumpy MISA target, mean |bias of E[u]| / sd: exact draws {bias_exact:.3f}, "
        + ", ".join(f"{m} {bias[m]:.3f} (acceptance {rates[m]:.2f})" for m in bias)
    )
    assert bias["whitened"] <= 1.5 * bias_exact, report
    assert rates["whitened"] > 0.5, report


def test_authors_mode_matches_hand_written_metropolis_step():
    """One leapfrog step and Metropolis test in action space, written out by hand.

    The authors' target is ``log TanhNormal(a; loc, scale) + c . a`` on the open
    box; its gradient is written analytically here. Proposals leaving the box
    must be rejected, the others accepted with probability ``min(1, exp(-dH))``.
    """
    n, d, eps = 600, 2, 0.4
    g = gen(8)
    dt = torch.float64
    loc = 0.5 * torch.randn(n, d, generator=g, dtype=dt)
    scale = 0.3 + 0.5 * torch.rand(n, d, generator=g, dtype=dt)
    a0 = 0.98 * (2 * torch.rand(n, d, generator=g, dtype=dt) - 1)
    c = torch.tensor([0.5, -0.3], dtype=dt)

    def log_density(a):
        u = 0.5 * torch.log((1 + a) / (1 - a))
        return (
            -0.5 * ((u - loc) / scale) ** 2
            - torch.log(scale)
            - 0.5 * math.log(2 * math.pi)
            - torch.log(1 - a * a)
            + c * a
        ).sum(-1)

    def grad(a):
        u = 0.5 * torch.log((1 + a) / (1 - a))
        return (-(u - loc) / scale**2 + 2 * a) / (1 - a * a) + c

    actions, info = sample_tilted_tanh_normal(
        lambda a: (c * a).sum(-1),
        loc,
        scale,
        a0,
        num_samples=1,
        num_burnin=0,
        num_leapfrog=1,
        step_size=eps,
        generator=gen(9),
        mode="authors",
    )
    # The sampler's draws: momenta, then uniforms, from its generator.
    g = gen(9)
    p0 = torch.randn(n, d, generator=g, dtype=dt)
    u = torch.rand(n, generator=g, dtype=dt)
    p_half = p0 + 0.5 * eps * grad(a0)
    a1 = a0 + eps * p_half
    inside = (a1.abs() < 1).all(-1)
    a1_in = torch.where(inside.unsqueeze(-1), a1, torch.zeros_like(a1))
    p1 = p_half + 0.5 * eps * grad(a1_in)
    delta = (-log_density(a1_in) + 0.5 * (p1**2).sum(-1)) - (
        -log_density(a0) + 0.5 * (p0**2).sum(-1)
    )
    accept = inside & (torch.log(u) < (-delta).clamp(max=0))
    expected = torch.where(accept.unsqueeze(-1), a1, a0)

    # The case is not degenerate: moves leave the box, others are accepted.
    assert 0.1 < (~inside).double().mean() < 0.9
    assert accept.sum() > 0.1 * n and (inside & ~accept).sum() > 0
    torch.testing.assert_close(actions[0], expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(info["acceptance_rate"], accept.to(dt))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": torch.zeros(())}, "shape"),
        ({"init": torch.tensor([[float("nan"), 0.0]])}, "non-finite"),
        ({"scale": torch.ones(3)}, "broadcast"),
        ({"scale": -torch.ones(2)}, "positive"),
        ({"num_samples": 5, "num_chains": 2}, "divisible"),
        ({"step_size": 0.0}, "positive"),
        ({"step_size": float("inf")}, "finite"),
        ({"step_size": float("nan")}, "finite"),
        ({"num_burnin": -1}, "num_burnin"),
        ({"num_leapfrog": 1.5}, "num_leapfrog must be an integer"),
        ({"num_burnin": 3, "num_adaptation_steps": 4}, r"\[0, num_burnin=3\]"),
        ({"shared_step_size": True, "step_size": torch.ones(4)}, "scalar step_size"),
        ({"shared_step_size": False, "step_size": torch.ones(3)}, "broadcast"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"init": torch.zeros(4, 2), "num_samples": 4}
    args.update(kwargs)
    init = args.pop("init")
    with pytest.raises(ValueError, match=match):
        hmc_sample(lambda x: -x.pow(2).sum(-1), init, **args)


def test_bad_log_prob_shape():
    with pytest.raises(ValueError, match="log_prob_fn"):
        hmc_sample(lambda x: -x.pow(2), torch.zeros(4, 2), num_samples=2)


def test_tilted_bad_input():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="mode"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z + 1, z, mode="nuts")
    with pytest.raises(ValueError, match="scale"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z, z)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z + 1, z + 2)
    with pytest.raises(ValueError, match="shape"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z[:2] + 1, z)
    with pytest.raises(ValueError, match="divisible by num_chains"):
        sample_tilted_tanh_normal(
            lambda a: a.sum(-1), z, z + 1, z, num_samples=5, num_chains=2
        )
    with pytest.raises(ValueError, match="target_accept"):
        sample_tilted_tanh_normal(lambda a: a.sum(-1), z, z + 1, z, target_accept=1)


@pytest.mark.parametrize("mode", ["whitened", "authors"])
def test_tilted_log_weight_shape_checked(mode):
    # A critic's [*batch, 1] output must not broadcast silently against log pi.
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="log_weight_fn"):
        sample_tilted_tanh_normal(
            lambda a: a.sum(-1, keepdim=True), z, z + 1, z, mode=mode, num_samples=2
        )
