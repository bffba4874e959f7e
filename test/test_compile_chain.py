"""The HMC chain inside an outer ``torch.compile``, against eager.

Under ``torch.compile`` the sampler runs its transitions as one ``scan``;
eager runs them in a Python loop. Both take the same draws (inductor's
``fallback_random`` makes its random ops eager's), so with the same seed the
compiled chain, and the loss built on it, must equal the eager one up to
rounding. ``fullgraph=True`` shows the chain is inside the graph: a graph
break (the sampler kept out, an ``autograd.grad``) would raise.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch._inductor.config as inductor_config
from omegaconf import OmegaConf

from test_misa_loss import build, LOSS_KEYS, make_data
from torchrl_misa.mcmc import hmc_sample


@pytest.fixture
def same_draws():
    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def test_scanned_chain_equals_the_eager_loop(same_draws):
    weights = torch.tensor([0.5, -1.0, 2.0])

    def log_prob(x):  # a Gaussian tilted by a bump: not symmetric
        return -0.5 * ((x - weights) ** 2).sum(-1) + torch.tanh(x).sum(-1)

    def draw(init):
        return hmc_sample(
            log_prob,
            init,
            num_samples=6,
            num_burnin=4,
            num_chains=2,
            thin=2,
            validate=False,
        )

    init = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    eager, eager_info = draw(init)
    torch.manual_seed(1)
    compiled, compiled_info = torch.compile(draw, fullgraph=True)(init)
    assert compiled.shape == eager.shape == (6, 32, 3)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    for key in ("acceptance_rate", "burnin_acceptance_rate", "step_size"):
        torch.testing.assert_close(compiled_info[key], eager_info[key])
    assert (compiled_info["num_divergent"] == eager_info["num_divergent"]).all()
    # the chains moved: equal outputs are not the initial positions twice
    assert 0.3 < float(eager_info["acceptance_rate"].mean()) < 1.0


def test_compiled_loss_with_its_chain_equals_eager(same_draws):
    """MISA's losses with the HMC chain in one graph, and their gradients."""
    loss, _ = build(validate_inputs=False)
    data = make_data((16,))

    def total(td):
        out = loss(td)
        return sum(out[k] for k in LOSS_KEYS), out["hmc_acceptance_rate"]

    def run(fn):
        torch.manual_seed(3)
        value, acceptance = fn(data.clone())
        params = [p for p in loss.parameters() if p.requires_grad]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        return value, acceptance, grads

    eager = run(total)
    compiled = run(torch.compile(total, fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1])
    for g_compiled, g_eager in zip(compiled[2], eager[2]):
        if g_eager is None:
            assert g_compiled is None
        else:
            torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)


def test_no_cpp_compiler_runs_the_update_eagerly(misa_script, monkeypatch, caplog):
    """Without a C++ compiler, torch.compile on the CPU fails at the first call:
    the recipe says so in one line and keeps the eager update."""
    monkeypatch.setenv("CXX", "no-such-compiler-on-this-machine")
    cfg = OmegaConf.create(
        {"optim": {"device": "cpu"}, "compile": {"compile_mode": None}}
    )

    def update(batch, active):
        return batch

    torchrl_logger = logging.getLogger("torchrl")
    monkeypatch.setattr(torchrl_logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="torchrl"):
        out = misa_script.utils.compile_update(update, cfg)
    assert out is update
    assert "no C++ compiler found" in caplog.text
