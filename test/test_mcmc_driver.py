"""``hmc_sample`` against a brute-force HMC written out chain by chain.

The reference below loops over chains and transitions in plain Python with a
hand-written gradient, textbook leapfrog, Metropolis test and TFP's
``SimpleStepSizeAdaptation`` rule. It consumes the same random numbers as the
sampler: per transition, one ``randn`` of the chains' position shape (the
momenta), then one ``rand`` of the chains' shape (the accept draws), from the
same generator. With float64 both must then produce the same chains, which
pins down leapfrog, acceptance, adaptation (per chain and shared), the
preconditioner, thinning and the order in which chains are concatenated.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrl_misa.mcmc import build_kernel, hmc_sample

B, D = 3, 2
MU = torch.tensor([[0.5, -1.0], [0.0, 2.0], [-1.5, 0.3]], dtype=torch.float64)


def log_prob(x):
    """A non-Gaussian target: -sum(x^4)/4 - sum((x - mu_b)^2)/2 per batch element."""
    return (-0.25 * x.pow(4) - 0.5 * (x - MU).pow(2)).sum(-1)


def grad_log_prob(x, b):
    return [-(xi**3) - (xi - MU[b, i].item()) for i, xi in enumerate(x)]


def log_prob_scalar(x, b):
    return sum(
        -0.25 * xi**4 - 0.5 * (xi - MU[b, i].item()) ** 2 for i, xi in enumerate(x)
    )


def reference(
    init,
    num_samples,
    num_burnin,
    num_leapfrog,
    step_size,
    num_adaptation_steps,
    target_accept,
    rate,
    shared,
    num_chains,
    thin,
    scale,
    seed,
    threshold=1000.0,
):
    """Brute-force HMC.

    Returns samples ``[num_samples, B, D]``, and per batch element the final step
    size (mean over chains), the acceptance rate after burn-in and the number
    of divergent transitions (energy error above ``threshold`` or non-finite).
    """
    g = torch.Generator().manual_seed(seed)
    per_chain = num_samples // num_chains
    n_steps = num_burnin + per_chain * thin
    chain_shape = (num_chains, B) if num_chains > 1 else (B,)
    momenta, uniforms = [], []
    for _ in range(n_steps):  # the sampler's draw order
        momenta.append(torch.randn(*chain_shape, D, generator=g, dtype=torch.float64))
        uniforms.append(torch.rand(*chain_shape, generator=g, dtype=torch.float64))
    if num_chains == 1:
        momenta = [m.unsqueeze(0) for m in momenta]
        uniforms = [u.unsqueeze(0) for u in uniforms]
    chains = [(c, b) for c in range(num_chains) for b in range(B)]
    # Chain coordinates z = x / scale; the target in z is log_prob(z * scale).
    z = {
        k: [init[k[1], i].item() / scale[k[1], i].item() for i in range(D)]
        for k in chains
    }
    eps = {k: step_size for k in chains}
    kept = {k: [] for k in chains}
    divergent, accepted = [0] * B, [0.0] * B

    def lp_and_grad(zk, b):
        x = [zk[i] * scale[b, i].item() for i in range(D)]
        gx = grad_log_prob(x, b)
        return log_prob_scalar(x, b), [gx[i] * scale[b, i].item() for i in range(D)]

    for t in range(n_steps):
        accept_prob = {}
        for c, b in chains:
            k = (c, b)
            m = momenta[t][c, b].tolist()
            lp0, g0 = lp_and_grad(z[k], b)
            q, p = list(z[k]), [m[i] + 0.5 * eps[k] * g0[i] for i in range(D)]
            try:
                for j in range(num_leapfrog):
                    q = [q[i] + eps[k] * p[i] for i in range(D)]
                    lp1, g1 = lp_and_grad(q, b)
                    half = 0.5 if j == num_leapfrog - 1 else 1.0
                    p = [p[i] + half * eps[k] * g1[i] for i in range(D)]
                h1 = -lp1 + 0.5 * sum(v * v for v in p)
            except OverflowError:  # the trajectory blew up
                h1 = math.inf
            h0 = -lp0 + 0.5 * sum(v * v for v in m)
            energy_error = h1 - h0 if math.isfinite(h1) else math.inf
            divergent[b] += energy_error > threshold
            accept_prob[k] = min(1.0, math.exp(-energy_error))
            if math.log(uniforms[t][c, b].item()) < min(0.0, -energy_error):
                z[k] = q
                if t >= num_burnin:
                    accepted[b] += 1 / (num_chains * per_chain * thin)
            if t >= num_burnin and (t - num_burnin) % thin == thin - 1:
                kept[k].append([z[k][i] * scale[b, i].item() for i in range(D)])
        if t < num_adaptation_steps:
            if shared:
                grow = sum(accept_prob.values()) / len(chains) > target_accept
                new = (
                    eps[chains[0]] * (1 + rate) if grow else eps[chains[0]] / (1 + rate)
                )
                eps = {k: new for k in chains}
            else:
                eps = {
                    k: (
                        eps[k] * (1 + rate)
                        if accept_prob[k] > target_accept
                        else eps[k] / (1 + rate)
                    )
                    for k in chains
                }
    samples = torch.tensor(
        [
            [sum((kept[(c, b)] for c in range(num_chains)), [])[n] for b in range(B)]
            for n in range(num_samples)
        ],
        dtype=torch.float64,
    )
    final_step = torch.tensor(
        [sum(eps[(c, b)] for c in range(num_chains)) / num_chains for b in range(B)],
        dtype=torch.float64,
    )
    return samples, final_step, torch.tensor(accepted, dtype=torch.float64), divergent


@pytest.mark.parametrize(
    "shared, num_chains, thin, use_scale, step_size, threshold",
    [
        (True, 1, 1, False, 0.8, None),
        (False, 1, 1, False, 0.8, None),
        (True, 2, 2, True, 0.8, None),
        (False, 3, 1, True, 0.8, None),
        (False, 2, 1, False, 3.0, None),
        (True, 2, 1, False, 1.5, 0.5),  # a kernel with its own divergence threshold
    ],
)
# The step of 3.0 leaves every chain stuck after burn-in, which is warned about.
@pytest.mark.filterwarnings("ignore:no chain moved:RuntimeWarning")
def test_matches_brute_force(shared, num_chains, thin, use_scale, step_size, threshold):
    samples, info, expected, final_step, acceptance, divergent = run_both(
        shared, num_chains, thin, use_scale, step_size, threshold, compile=False
    )
    torch.testing.assert_close(samples, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(info["step_size"], final_step, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(info["acceptance_rate"], acceptance)
    assert info["num_divergent"].tolist() == divergent
    if step_size > 1 or threshold is not None:  # divergences must actually occur
        assert sum(divergent) > 0
    if threshold is not None:  # and the default threshold would count fewer
        assert sum(divergent) > sum(
            run_reference(shared, num_chains, thin, use_scale, step_size, None)[3]
        )
    if (
        step_size < 1
    ):  # the chains moved: the comparison is not between copies of the start
        assert (samples != INIT).any(-1).float().mean() > 0.5


INIT = torch.tensor([[0.1, 0.2], [-0.3, 1.0], [0.0, 0.0]], dtype=torch.float64)
SCALE = torch.tensor([[0.5, 2.0], [1.0, 0.7], [1.5, 1.0]], dtype=torch.float64)


def settings(shared, num_chains, thin, step_size):
    return {
        "num_samples": 6,
        "num_burnin": 5,
        "num_leapfrog": 3,
        "step_size": step_size,
        "num_adaptation_steps": 4,
        "target_accept": 0.75,
        "adaptation_rate": 0.1,
        "shared_step_size": shared,
        "num_chains": num_chains,
        "thin": thin,
    }


def run_reference(shared, num_chains, thin, use_scale, step_size, threshold):
    kwargs = settings(shared, num_chains, thin, step_size)
    return reference(
        INIT,
        kwargs["num_samples"],
        kwargs["num_burnin"],
        kwargs["num_leapfrog"],
        kwargs["step_size"],
        kwargs["num_adaptation_steps"],
        kwargs["target_accept"],
        kwargs["adaptation_rate"],
        shared,
        num_chains,
        thin,
        SCALE if use_scale else torch.ones_like(SCALE),
        seed=7,
        threshold=1000.0 if threshold is None else threshold,
    )


def run_both(shared, num_chains, thin, use_scale, step_size, threshold, compile):
    """``hmc_sample``'s samples and info, then the reference's four outputs."""
    samples, info = hmc_sample(
        log_prob,
        INIT,
        scale=SCALE if use_scale else None,
        generator=torch.Generator().manual_seed(7),
        kernel=(
            None if threshold is None else build_kernel(divergence_threshold=threshold)
        ),
        compile=compile,
        **settings(shared, num_chains, thin, step_size),
    )
    return (samples, info) + run_reference(
        shared, num_chains, thin, use_scale, step_size, threshold
    )


def test_thinning_keeps_every_thin_th_state():
    """Same seed and transitions: thin=3 keeps states 3, 6, ... of thin=1."""
    init = torch.zeros(B, D, dtype=torch.float64)
    common = {"num_burnin": 4, "step_size": 0.5}
    full, _ = hmc_sample(
        log_prob,
        init,
        num_samples=12,
        generator=torch.Generator().manual_seed(3),
        **common,
    )
    thinned, _ = hmc_sample(
        log_prob,
        init,
        num_samples=4,
        thin=3,
        generator=torch.Generator().manual_seed(3),
        **common,
    )
    torch.testing.assert_close(thinned, full[2::3])


def replay_draws(generators, group_dim=None):
    """The sampler's draws from one generator per group (``None``: a single group).

    With ``group_dim``, group ``i``'s slice of every draw comes from
    ``generators[i]``, exactly as a call on that slice alone would draw it.
    """
    from torchrl_misa.mcmc import sampler

    draws = sampler.__dict__["_draws"]

    def grouped(position, generator):
        if group_dim is None:
            return draws(position, generators[0])
        parts = [
            draws(position.select(group_dim, i), g) for i, g in enumerate(generators)
        ]
        return tuple(torch.stack(p, group_dim) for p in zip(*parts))

    return grouped


@pytest.mark.parametrize("num_chains", [1, 2])
@pytest.mark.filterwarnings("ignore:no chain moved:RuntimeWarning")
def test_groups_adapt_as_separate_calls(monkeypatch, num_chains):
    """``num_group_dims=1``: group i's chains, step size and info are those of a
    call on group i alone, given the same draws."""
    from torchrl_misa.mcmc import sampler

    # two independent problems of very different scales, 4 states each
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64).view(2, 1, 2)
    sd = torch.tensor([0.1, 3.0], dtype=torch.float64).view(2, 1, 1)
    init = torch.zeros(2, 4, 2, dtype=torch.float64)

    def target(i=None):
        m, s = (mu, sd) if i is None else (mu[i], sd[i])
        return lambda x: (-0.5 * ((x - m) / s) ** 2).sum(-1)

    kwargs = {
        "num_samples": 4,
        "num_burnin": 6,
        "num_chains": num_chains,
        "step_size": 1.0,
        "adaptation_rate": 0.5,
    }
    seeds = [11, 12]
    group_dim = 1 if num_chains > 1 else 0
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    monkeypatch.setattr(sampler, "_draws", replay_draws(gens, group_dim))
    samples, info = hmc_sample(target(), init, num_group_dims=1, **kwargs)
    monkeypatch.undo()
    steps = []
    for i, seed in enumerate(seeds):
        gen = [torch.Generator().manual_seed(seed)]
        monkeypatch.setattr(sampler, "_draws", replay_draws(gen))
        samples_i, info_i = hmc_sample(target(i), init[i], **kwargs)
        monkeypatch.undo()
        torch.testing.assert_close(samples[:, i], samples_i, rtol=1e-12, atol=1e-12)
        for key in info_i.keys():
            torch.testing.assert_close(info[i][key], info_i[key])
        steps.append(info_i["step_size"][0].item())
    # the groups' step sizes went separate ways (one shared size would not)
    assert steps[1] > 3 * steps[0]


def test_group_dims_are_checked():
    x = torch.zeros(2, 3, 1)
    lp = lambda x: -(x**2).sum(-1)  # noqa: E731
    for bad in (-1, 3, 1.0, True):
        with pytest.raises(ValueError, match="num_group_dims"):
            hmc_sample(lp, x, num_samples=2, num_group_dims=bad)
    with pytest.raises(ValueError, match="does not broadcast"):
        hmc_sample(lp, x, num_samples=2, num_group_dims=1, step_size=torch.ones(3))
    samples, info = hmc_sample(
        lp, x, num_samples=2, num_group_dims=1, step_size=torch.tensor([0.5, 0.1])
    )
    assert info["step_size"].shape == (2, 3)
