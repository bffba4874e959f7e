"""MISALoss with the real HMC sampler, on a target known in closed form.

With a critic ``Q(s, a) = c * sum_d atanh(a_d)`` and a tanh-Gaussian policy
``u ~ N(mu(s), sigma^2)``, ``a = tanh u``, the tilted target
``p(a|s) ∝ pi(a|s) exp Q(s, a)`` is, in pre-tanh space,
``N(u; mu, sigma^2) exp(c u) ∝ N(u; mu + c sigma^2, sigma^2)``. The samples
the loss draws for its correction term must follow it, whatever the
sampler's coordinates are, and the correction's gradient with respect to the
policy mean must be ``unbiased_weight * E[(u - mu) / sigma^2] = unbiased_weight * c``
per state and dimension.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

import torchrl_misa.mcmc as mcmc
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl_misa import MISALoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

N_OBS, N_ACT, C = 2, 2, 0.8


class LinearGaussian(nn.Module):
    """loc = W s + b, scale = exp(log_std): the policy's pre-tanh Gaussian."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(N_OBS, N_ACT)
        self.log_std = nn.Parameter(torch.tensor([-1.0, -0.5]))

    def forward(self, obs):
        loc = self.linear(obs)
        return loc, self.log_std.exp().expand_as(loc)


class AtanhCritic(nn.Module):
    """Q(s, a) = c * sum_d atanh(a_d) (+ 0 * s, so that it reads the state)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor([C]))

    def forward(self, obs, act):
        u = torch.atanh(act.clamp(-1 + 1e-6, 1 - 1e-6))
        return self.c * u.sum(-1, keepdim=True) + 0.0 * obs.sum(-1, keepdim=True)


def make_loss(**kwargs):
    torch.manual_seed(0)
    policy = LinearGaussian()
    with torch.no_grad():
        policy.linear.weight.mul_(0.3)
        policy.linear.bias.zero_()
    actor = ProbabilisticActor(
        TensorDictModule(policy, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=Bounded(-1.0, 1.0, (N_ACT,)),
        distribution_class=TanhNormal,
    )
    critic = ValueOperator(AtanhCritic(), in_keys=["observation", "action"])
    return MISALoss(actor, critic, **kwargs), policy


def make_data(batch, policy):
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(batch, N_OBS, generator=g)
    with torch.no_grad():
        loc, scale = policy(obs)
    # Start the chains off the target, at the mirror of its mean
    # (loc - c sigma^2): the samples can match the target only if the chains
    # move, towards the tilt the loss hands the sampler.
    u0 = loc - C * scale**2
    return TensorDict(
        {
            "observation": obs,
            "action": torch.tanh(u0),
            "next": {
                "observation": torch.randn(batch, N_OBS, generator=g),
                "reward": torch.zeros(batch, 1),
                "done": torch.zeros(batch, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch, 1, dtype=torch.bool),
            },
        },
        [batch],
    )


@pytest.fixture
def recorded(monkeypatch):
    """Run the real sampler, keeping what it returned."""
    real = mcmc.sample_tilted_tanh_normal
    calls = []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(mcmc, "sample_tilted_tanh_normal", spy)
    return calls


@pytest.mark.parametrize(
    "mode, num_chains",
    [("whitened", 1), ("pretanh", 1), ("whitened", 2), ("authors", 1)],
)
def test_correction_samples_follow_the_tilted_policy(recorded, mode, num_chains):
    torch.manual_seed(1)
    loss, policy = make_loss(
        num_mcmc_samples=40,
        num_burnin=5,
        sampler_mode=mode,
        step_size=0.5,
        num_chains=num_chains,
    )
    data = make_data(300, policy)
    out = loss(data)
    actions, info = recorded[0]
    assert actions.shape == (40, 300, N_ACT)
    loc, scale = policy(data["observation"])
    z = (torch.atanh(actions.clamp(-1 + 1e-6, 1 - 1e-6)) - (loc + C * scale**2)) / scale
    z = z.detach()
    # chains that stayed at their start would give a mean of -2 c sigma ~ -0.8
    # and no spread within a state
    assert z.mean().abs() < 0.1, z.mean()
    assert (z.std() - 1).abs() < 0.1, z.std()
    assert z.std(0).mean() > 0.8, z.std(0).mean()
    # the loss reports the sampler's own per-state figures, averaged
    for name in ("acceptance_rate", "step_size"):
        torch.testing.assert_close(out[f"hmc_{name}"], info[name].mean())


def test_correction_gradient(recorded):
    """Gradient of the actor loss w.r.t. the policy's mean, with bc_weight = 0.

    ``-Qmin(s, a~) = -c sum_d u~_d`` contributes ``-c`` per action dimension;
    the correction ``w * mean log pi(a_mc|s)`` contributes ``w * c``.
    """
    w = 2.0
    loss, policy = make_loss(
        num_mcmc_samples=40, num_burnin=5, unbiased_weight=w, bc_weight=0.0
    )
    data = make_data(300, policy)
    torch.manual_seed(2)
    (grad,) = torch.autograd.grad(loss(data)["loss_actor"], policy.linear.bias)
    assert torch.allclose(grad, torch.full((N_ACT,), (w - 1) * C), atol=0.1), grad
