"""The ``torch.compile`` path of the HMC sampler against the eager one and a brute force.

The compiled transition takes the same random draws as the eager one (they are
drawn outside the kernel), so with the same generator seed both must produce
the same chains up to floating-point rounding. One small critic ensemble, one
batch shape, and the brute-force reference of ``test_mcmc_driver``: compiling
takes a while, so this file compiles few graphs.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torch._dynamo.utils import counters

from test_mcmc_driver import run_both
from torchrl_misa.mcmc import sample_tilted_tanh_normal

N_STATES, N_OBS, N_ACT = 16, 3, 2


def make_critics():
    torch.manual_seed(0)
    return nn.ModuleList(
        TensorDictModule(
            nn.Sequential(
                nn.Linear(N_OBS + N_ACT, 8), nn.ELU(), nn.Linear(8, 1), nn.Flatten(0)
            ),
            in_keys=["obs_act"],
            out_keys=["q"],
        )
        for _ in range(2)
    )


def make_log_weight(critics, obs):
    """Qmin(s, a) for actions ``[*chain_batch, N_ACT]`` through TensorDictModules."""

    def log_weight(action):
        x = torch.cat([obs.expand(*action.shape[:-1], N_OBS), action], -1)
        x = x.reshape(-1, N_OBS + N_ACT)
        td = TensorDict({"obs_act": x}, batch_size=x.shape[:1])
        q = torch.minimum(critics[0](td)["q"], critics[1](td)["q"])
        return q.reshape(action.shape[:-1])

    return log_weight


def draw(critics, obs, compile, mode, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = 0.5 * obs[:, :N_ACT]
    scale = torch.full((N_STATES, N_ACT), 0.6)
    init = torch.tanh(obs[:, -N_ACT:])
    return sample_tilted_tanh_normal(
        make_log_weight(critics, obs),
        loc,
        scale,
        init,
        num_samples=10,
        num_burnin=5,
        num_chains=2,
        generator=g,
        compile=compile,
        mode=mode,
    )


@pytest.mark.parametrize("mode", ["whitened"])
def test_compiled_matches_eager(mode):
    critics = make_critics()
    obs = torch.randn(N_STATES, N_OBS, generator=torch.Generator().manual_seed(1))
    eager, eager_info = draw(critics, obs, compile=False, mode=mode)
    compiled, compiled_info = draw(critics, obs, compile=True, mode=mode)
    assert compiled.shape == eager.shape == (10, N_STATES, N_ACT)
    # Same draws, same arithmetic: identical chains but for rounding (an
    # accept decision flipped by rounding would show up as a large gap).
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        compiled_info["acceptance_rate"], eager_info["acceptance_rate"]
    )
    torch.testing.assert_close(compiled_info["step_size"], eager_info["step_size"])
    assert all(p.grad is None for p in critics.parameters())


def test_compiled_reuses_graph_and_leaves_parameters_alone():
    critics = make_critics()
    obs = torch.randn(N_STATES, N_OBS, generator=torch.Generator().manual_seed(2))
    draw(critics, obs, compile=True, mode="whitened")
    graphs = counters["stats"]["unique_graphs"]
    # A new batch: new closure, new tensors, same shapes, weights moved in place
    # as an optimiser would, and an outer no_grad: no new graph.
    with torch.no_grad():
        for p in critics.parameters():
            p.add_(0.1)
        obs2 = torch.randn(N_STATES, N_OBS, generator=torch.Generator().manual_seed(3))
        actions, info = draw(critics, obs2, compile=True, mode="whitened")
    assert counters["stats"]["unique_graphs"] == graphs
    assert not actions.requires_grad
    assert all(p.grad is None for p in critics.parameters())
    # The compiled graph sees the updated weights: eager on the same inputs agrees.
    with torch.no_grad():
        eager, _ = draw(critics, obs2, compile=False, mode="whitened")
    torch.testing.assert_close(actions, eager, rtol=1e-4, atol=1e-4)


def test_compiled_kernel_matches_brute_force():
    """A kernel of its own (divergence threshold 0.5), compiled: per-chain
    adaptation, two chains and the preconditioner against the brute-force HMC."""
    samples, info, expected, final_step, acceptance, divergent = run_both(
        shared=False,
        num_chains=2,
        thin=1,
        use_scale=True,
        step_size=1.5,
        threshold=0.5,
        compile=True,
    )
    torch.testing.assert_close(samples, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(info["step_size"], final_step, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(info["acceptance_rate"], acceptance)
    assert info["num_divergent"].tolist() == divergent
    assert sum(divergent) > 0  # the threshold of this kernel, not the default one
