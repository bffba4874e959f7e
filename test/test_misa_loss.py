"""MISALoss against a brute-force evaluation of the MISA objectives.

The policy's Gaussian noise and the MCMC samples are injected (deterministic
noise per tensor size, a fake sampler that records its call), so every loss
entry can be recomputed here with plain float64 tensor arithmetic from the
networks' weights: the critic MLP written out by hand, the tanh-Gaussian
density written out by hand, log-mean-exp as an explicit max-shifted sum.
"""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

import torchrl_misa.mcmc as mcmc
from torchrl.data import Bounded
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhNormal
from torchrl.modules import ValueOperator
from torchrl.objectives.utils import ValueEstimators
from torchrl_misa import MISALoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

N_OBS, N_ACT, HIDDEN, K = 3, 2, 8, 4
GAMMA = 0.99


# ----------------------------------------------------------------- networks
class QNet(nn.Module):
    """Q(s, a) = W2 elu(W1 [s, a] + b1) + b2."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_OBS + N_ACT, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, 1)
        )

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1))


def make_actor(obs_key="observation"):
    net = nn.Sequential(
        nn.Linear(N_OBS, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, 2 * N_ACT),
        NormalParamExtractor(),
    )
    module = TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=Bounded(-1.0, 1.0, (N_ACT,)),
        distribution_class=TanhNormal,
    )
    return actor, net


def make_critic(obs_key="observation", action_key="action"):
    return ValueOperator(
        QNet(), in_keys=[obs_key, action_key], out_keys=["state_action_value"]
    )


def make_data(
    batch,
    seed=1,
    obs_key="observation",
    action_key="action",
    reward="reward",
    done="done",
    terminated="terminated",
):
    g = torch.Generator().manual_seed(seed)
    term = torch.rand(*batch, 1, generator=g) < 0.3
    return TensorDict(
        {
            obs_key: torch.randn(*batch, N_OBS, generator=g),
            action_key: (torch.rand(*batch, N_ACT, generator=g) * 2 - 1) * 0.95,
            "next": {
                obs_key: torch.randn(*batch, N_OBS, generator=g),
                reward: torch.randn(*batch, 1, generator=g),
                done: term.clone(),
                terminated: term,
            },
        },
        batch,
    )


def build(seed=0, **kwargs):
    """A loss on tiny networks, with target critics made different from the critics.

    ``alpha`` starts away from 1 so that ``loss_alpha`` (``-log alpha * ...``) is
    not zero whatever its other factor.
    """
    kwargs.setdefault("alpha_init", 0.7)
    torch.manual_seed(seed)
    actor, actor_net = make_actor()
    loss = MISALoss(actor, make_critic(), num_mcmc_samples=K, num_burnin=1, **kwargs)
    with torch.no_grad():
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(0.1 * torch.randn_like(p))
    return loss, actor_net


# ------------------------------------------------------ injected randomness
# The default sample shape of torch.distributions, built once as torch does.
EMPTY_SHAPE = torch.Size()


def eps_for(shape, offset=0):
    """Fixed standard-normal noise depending only on the number of elements."""
    n = math.prod(shape)
    g = torch.Generator().manual_seed(10_000 + offset + n)
    return torch.randn(n, generator=g, dtype=torch.float64).view(shape)


@pytest.fixture(name="fixed_noise")
def fixed_noise_fixture(monkeypatch):
    """Replace the Gaussian draws by ``eps_for`` and MCMC by a recording fake."""

    def rsample(self, sample_shape=EMPTY_SHAPE):
        shape = self._extended_shape(sample_shape)
        return self.loc + eps_for(shape).to(self.loc.dtype) * self.scale

    def sample(self, sample_shape=EMPTY_SHAPE):
        with torch.no_grad():
            return rsample(self, sample_shape)

    monkeypatch.setattr(torch.distributions.Normal, "rsample", rsample)
    monkeypatch.setattr(torch.distributions.Normal, "sample", sample)
    calls = []

    def fake_sampler(log_weight_fn, loc, scale, init_action, **kwargs):
        n = kwargs["num_samples"]
        u = loc + scale * eps_for((n, *loc.shape), offset=7).to(loc.dtype)
        batch = loc.shape[:-1]
        # per-state diagnostics that differ between states, so that averaging shows
        noise = eps_for(batch, offset=11).to(loc.dtype)
        info = TensorDict(
            {
                "acceptance_rate": torch.sigmoid(noise),
                "step_size": noise.exp(),
                "num_divergent": (noise > 0).long(),
            },
            batch,
        )
        calls.append(
            dict(
                fn=log_weight_fn,
                loc=loc,
                scale=scale,
                init=init_action,
                info=info,
                **kwargs,
            )
        )
        return torch.tanh(u), info

    monkeypatch.setattr(mcmc, "sample_tilted_tanh_normal", fake_sampler)
    return calls


# ------------------------------------------------------- brute-force pieces
def member_weights(params, i=None):
    """Plain float64 weight dict of a critic (member ``i`` of an ensemble)."""
    out = {}
    for key, value in params.items(True, True):
        value = value.detach().double()
        out[".".join(key[-2:])] = value if i is None else value[i]
    return out


def q_ref(w, obs, act):
    """The critic MLP written out: ``[*lead] -> Q``."""
    x = torch.cat([obs, act], -1)
    h = F.elu(x @ w["0.weight"].T + w["0.bias"])
    return (h @ w["2.weight"].T + w["2.bias"]).squeeze(-1)


def tanh_normal_logp(u, loc, scale):
    """log density of a = tanh(u), u ~ N(loc, scale), summed over the action."""
    z = (u - loc) / scale
    log_n = -0.5 * z**2 - scale.log() - 0.5 * math.log(2 * math.pi)
    return (log_n - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)


def log_mean_exp(x, dims):
    """log mean exp over ``dims``, max-shifted, by hand."""
    m = x.amax(dim=dims, keepdim=True)
    n = math.prod(x.shape[d] for d in dims)
    return (m + ((x - m).exp().sum(dim=dims, keepdim=True) / n).log()).squeeze(dims)


def reference(
    loss,
    actor_net,
    data,
    *,
    estimator="misa",
    bc_term=True,
    correction=True,
    bc_weight=0.5,
    uw=0.1,
    g1=5.0,
    tau=None,
    t_net=None,
    num_q=2,
    k_pi=K,
    k_mc=K,
    mc_offset=7,
):
    """Every MISA loss entry, recomputed from the spec's formulas (float64).

    The actor's terms stay differentiable w.r.t. the actor's parameters, so
    their gradients can be compared too. Returns per-transition terms.
    """
    obs, act = data["observation"].double(), data["action"].double()
    nobs = data["next", "observation"].double()
    r = data["next", "reward"].squeeze(-1).double()
    term = data["next", "terminated"].squeeze(-1).double()
    batch = data.batch_size
    actor_net = deepcopy(actor_net).double()
    for p_ref, p in zip(
        actor_net.parameters(), loss.actor_network_params.values(True, True)
    ):
        p_ref.data.copy_(p.data)
    # keep the actor's own params for gradient comparison
    loc, scale = actor_net(obs)
    u_new = loc + scale * eps_for((*batch, N_ACT))
    logp_new = tanh_normal_logp(u_new, loc, scale)
    logp_data = tanh_normal_logp(torch.atanh(act), loc, scale)
    a_pi = torch.tanh(loc + scale * eps_for((k_pi, *batch, N_ACT))).detach()
    a_mc = loc + scale * eps_for((k_mc, *batch, N_ACT), offset=mc_offset)
    a_mc = torch.tanh(a_mc).detach()
    logp_mc = tanh_normal_logp(torch.atanh(a_mc), loc, scale)
    with torch.no_grad():
        nloc, nscale = actor_net(nobs)
        a_next = torch.tanh(nloc + nscale * eps_for((*batch, N_ACT)))

    ws = [member_weights(loss.qvalue_network_params, i) for i in range(num_q)]
    wts = [member_weights(loss.target_qvalue_network_params, i) for i in range(num_q)]
    q_data = torch.stack([q_ref(w, obs, act) for w in ws])
    q_pi = torch.stack(
        [torch.stack([q_ref(w, obs, a_pi[j]) for j in range(k_pi)]) for w in ws]
    )
    q_next = torch.stack([q_ref(w, nobs, a_next) for w in wts]).min(0).values
    y = r + GAMMA * (1 - term) * q_next
    td = (q_data - y) ** 2

    dims = tuple(range(1, q_pi.ndim))
    if estimator == "dv":
        lme_all = log_mean_exp(q_pi, dims)
        gap = lme_all.view(-1, *[1] * len(batch)) - q_data
    elif estimator == "f":
        gap = (q_pi - 1).exp().mean(1) - q_data
    else:
        gap = log_mean_exp(q_pi, (1,)) - q_data
    out = {"q_gap": gap.mean(), "td_error": td.max(0).values, "_gap": gap}
    regularised = estimator != "ba" and t_net is None
    if not regularised:
        critic = td.sum(0)
    elif tau is None:
        critic = (td + g1 * gap).sum(0)
    else:
        alpha_prime = math.e
        critic = (td + alpha_prime * g1 * (gap - tau)).sum(0)
        out["loss_alpha_prime"] = -(alpha_prime * g1 * (gap - tau)).mean(0)
        out["alpha_prime"] = torch.tensor(alpha_prime)
    out["loss_qvalue"] = critic

    if t_net is not None:
        wt = member_weights(loss.mi_critic_network_params)
        e_data = q_ref(wt, obs, act)
        e_pi = torch.stack([q_ref(wt, obs, a_pi[j]) for j in range(k_pi)])
    else:
        e_data, e_pi = q_data.min(0).values, q_pi.min(0).values
    if estimator == "dv":
        norm = log_mean_exp(e_pi, tuple(range(e_pi.ndim)))
    elif estimator == "f":
        norm = (e_pi - 1).exp().mean(0)
    else:
        norm = log_mean_exp(e_pi, (0,))
    bound = logp_data.detach() + (e_data - norm if estimator != "ba" else 0.0)
    out["mi_bound"] = bound.mean()
    if t_net is not None:
        out["loss_mi_critic"] = -bound

    alpha = loss.log_alpha.detach().double().exp()
    q_new = torch.stack([q_ref(w, obs, torch.tanh(u_new)) for w in ws]).min(0).values
    bc = alpha * logp_new - (logp_data if bc_term else 0.0)
    actor = bc_weight * bc - q_new
    if correction:
        log_z = log_mean_exp(e_pi, (0,))
        if estimator == "dv":
            weight = log_z.exp() / log_z.exp().mean()
        elif estimator == "f":
            weight = (log_z - 1).exp()
        else:
            weight = torch.ones_like(log_z)
        actor = actor + uw * weight * logp_mc.mean(0)
    out["loss_actor"] = actor
    out["loss_alpha"] = -loss.log_alpha.detach().double() * (logp_new.detach() - N_ACT)
    out["entropy"] = -logp_new.detach().mean()
    out["alpha"] = alpha
    out["_actor_params"] = list(actor_net.parameters())
    out["_a_pi"], out["_loc"], out["_scale"] = a_pi, loc, scale
    return out


def assert_close(a, b, name=""):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=lambda m: f"{name}: {m}")


LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha")


def check_against_reference(
    out, ref, keys=LOSS_KEYS + ("q_gap", "mi_bound", "entropy", "alpha")
):
    for key in keys:
        value = ref[key]
        if key.startswith("loss_"):
            value = value.mean()
        assert_close(out[key], value.detach(), key)


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("batch", [[5], [2, 3]])
def test_losses_match_brute_force(fixed_noise, batch):
    loss, actor_net = build()
    data = make_data(batch)
    out = loss(data)
    ref = reference(loss, actor_net, data)
    check_against_reference(out, ref)
    info = fixed_noise[0]["info"]  # per-state values: the loss reports their mean
    assert_close(out["hmc_acceptance_rate"], info["acceptance_rate"].mean(), "acc")
    assert_close(out["hmc_step_size"], info["step_size"].mean(), "step size")
    assert_close(
        out["hmc_num_divergent"], info["num_divergent"].double().mean(), "divergent"
    )
    assert_close(data["td_error"], ref["td_error"], "td_error")
    assert set(out.keys()) == set(loss.out_keys)


def test_component_methods_match_brute_force(fixed_noise):
    """Each public loss method, called on its own, gives forward's entry."""
    data = make_data([5])
    loss, actor_net = build(lagrange_tau=0.5)
    ref = reference(loss, actor_net, data, tau=0.5)
    for name, method in (
        ("loss_qvalue", loss.qvalue_loss),
        ("loss_actor", loss.actor_loss),
        ("loss_alpha", loss.alpha_loss),
        ("loss_alpha_prime", loss.alpha_prime_loss),
    ):
        value, metadata = method(data.clone())
        assert isinstance(metadata, dict)
        assert_close(value, ref[name].mean().detach(), name)
    _, metadata = loss.qvalue_loss(data.clone())
    assert_close(metadata["td_error"].max(0).values, ref["td_error"], "td_error")


def test_forward_evaluates_each_network_once(fixed_noise, monkeypatch):
    """The shared terms are computed once: no network runs twice on the same inputs."""
    loss, actor_net = build(lagrange_tau=0.5)
    calls = {"actor": 0, "critic": 0}
    actor_net.register_forward_pre_hook(
        lambda *_: calls.update(actor=calls["actor"] + 1)
    )
    critic_call = loss._vmap_qvalue_networkN0

    def count_critic(*args, **kwargs):
        calls["critic"] += 1
        return critic_call(*args, **kwargs)

    monkeypatch.setattr(loss, "_vmap_qvalue_networkN0", count_critic)
    loss(make_data([5]))
    # actor: on s and on s'; critics: [a, a_pi], a~ (detached), target at s'
    # (the fake sampler does not call the critics)
    assert calls == {"actor": 2, "critic": 3}


def test_actor_gradient_matches_brute_force(fixed_noise):
    """The correction's gradient flows through log pi(a_mc|s) only, Q's through a~."""
    loss, actor_net = build()
    data = make_data([6])
    out = loss(data)
    ref = reference(loss, actor_net, data)
    params = list(loss.actor_network_params.values(True, True))
    grads = torch.autograd.grad(out["loss_actor"], params)
    ref_grads = torch.autograd.grad(ref["loss_actor"].mean(), ref["_actor_params"])
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, "actor gradient")
    assert any(g.abs().sum() > 0 for g in grads)


def test_sampler_call(fixed_noise):
    """The sampler gets the policy's pre-tanh loc/scale, the data actions and Qmin."""
    loss, actor_net = build(num_chains=2, sampler_mode="pretanh", step_size=0.3)
    data = make_data([5])
    loss(data)
    (call,) = fixed_noise
    loc, scale = actor_net(data["observation"])
    assert_close(call["loc"], loc.detach(), "loc")
    assert_close(call["scale"], scale.detach(), "scale")
    assert not call["loc"].requires_grad and not call["scale"].requires_grad
    assert_close(call["init"], data["action"], "init_action")
    assert call["num_samples"] == K and call["num_burnin"] == 1
    assert call["num_leapfrog"] == 2 and call["step_size"] == 0.3
    assert call["num_chains"] == 2 and call["mode"] == "pretanh"
    assert call["target_accept"] == 0.75 and call["compile"] is False
    assert call["validate"] is False  # the sampler's value checks follow the loss's
    build(validate_inputs=True)[0](make_data([5]))
    assert fixed_noise[-1]["validate"] is True


class GivenSampler:
    """A user sampler: samples ``tanh(loc + scale * eps)`` with its own noise
    (offset 13, not the default fake's 7) and per-state diagnostics; records
    its calls."""

    def __init__(self, k=K):
        self.k, self.calls = k, []

    def __call__(self, log_weight_fn, loc, scale, init_action, **options):
        self.calls.append({"fn": log_weight_fn, "loc": loc, "scale": scale, **options})
        self.calls[-1]["init"] = init_action
        eps = eps_for((self.k, *loc.shape), offset=13).to(loc.dtype)
        batch = loc.shape[:-1]
        info = {
            "acceptance_rate": torch.full(batch, 0.25, dtype=loc.dtype),
            "step_size": torch.full(batch, 0.5, dtype=loc.dtype),
            "num_divergent": torch.zeros(batch, dtype=torch.long),
        }
        return torch.tanh(loc + scale * eps), info


def test_given_sampler_draws_the_correction(fixed_noise):
    """A ``sampler`` argument replaces the HMC sampler: the actor loss and its
    gradient are the formula's with the given sampler's samples."""
    sampler = GivenSampler()
    loss, actor_net = build(sampler=sampler, step_size=0.3)
    assert loss.sampler is sampler
    data = make_data([2, 3])
    out = loss(data)
    assert not fixed_noise  # the built-in sampler was not called
    (call,) = sampler.calls
    loc, scale = actor_net(data["observation"])
    assert_close(call["loc"], loc.detach(), "loc")
    assert_close(call["scale"], scale.detach(), "scale")
    assert_close(call["init"], data["action"], "init_action")
    assert call["num_samples"] == K and call["step_size"] == 0.3
    a = torch.rand(2, 3, N_ACT) * 2 - 1
    assert_close(call["fn"](a), energy_reference(loss, data["observation"], a), "T")
    ref = reference(loss, actor_net, data, mc_offset=13)
    check_against_reference(out, ref)
    params = list(loss.actor_network_params.values(True, True))
    grads = torch.autograd.grad(out["loss_actor"], params)
    ref_grads = torch.autograd.grad(ref["loss_actor"].mean(), ref["_actor_params"])
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, "actor gradient")
    assert_close(out["hmc_acceptance_rate"], 0.25, "acc")
    assert_close(out["hmc_step_size"], 0.5, "step size")
    assert_close(out["hmc_num_divergent"], 0.0, "divergent")
    # the built-in fake's samples (offset 7) give another actor loss
    other = reference(loss, actor_net, data)["loss_actor"].mean()
    assert not torch.allclose(out["loss_actor"].double(), other.detach(), atol=1e-4)

    # set_sampler(None) goes back to the built-in sampler
    loss.set_sampler(None)
    assert_close(loss(data.clone())["loss_actor"], other.detach(), "default")
    assert len(fixed_noise) == 1 and len(sampler.calls) == 1


def test_given_sampler_equal_to_the_default_gives_the_same_losses():
    """The built-in HMC sampler passed as ``sampler`` = the default path, bit for bit."""
    data = make_data([5])
    outs = []
    for sampler in (None, mcmc.sample_tilted_tanh_normal):
        loss, _ = build(sampler=sampler)
        torch.manual_seed(3)
        out = loss(data.clone())
        params = list(loss.actor_network_params.values(True, True))
        outs.append((out, torch.autograd.grad(out["loss_actor"], params)))
    (default, default_grads), (given, given_grads) = outs
    assert set(default.keys()) == set(given.keys())
    for key in default.keys():
        assert torch.equal(default[key], given[key]), key
    for g, h in zip(default_grads, given_grads):
        assert torch.equal(g, h)


def test_bad_sampler():
    actor, _ = make_actor()
    with pytest.raises(
        TypeError, match="sampler must be a callable.*got an object of type str"
    ):
        MISALoss(actor, make_critic(), sampler="hmc")
    loss, _ = build()
    with pytest.raises(TypeError, match="sampler must be a callable"):
        loss.set_sampler(torch.zeros(3))
    assert loss.sampler is None
    with pytest.raises(ValueError, match="unbiased_correction=False"):
        build(sampler=GivenSampler(), unbiased_correction=False)
    data = make_data([5])

    def wrong_shape(*args, **kwargs):
        samples, info = GivenSampler()(*args, **kwargs)
        return samples[..., :1], info

    def no_info(*args, **kwargs):
        samples, info = GivenSampler()(*args, **kwargs)
        del info["step_size"]
        return samples, info

    loss.set_sampler(wrong_shape)
    with pytest.raises(ValueError, match=r"samples \[4, 5, 1\]; expected a tensor"):
        loss(data.clone())
    loss.set_sampler(lambda *args, **kwargs: GivenSampler()(*args, **kwargs)[0])
    with pytest.raises(ValueError, match=r"must return a pair \(samples, info\)"):
        loss(data.clone())
    loss.set_sampler(no_info)
    with pytest.raises(ValueError, match="no 'step_size' entry"):
        loss(data.clone())


def energy_reference(loss, obs, a, num_q=2):
    ws = [member_weights(loss.qvalue_network_params, i) for i in range(num_q)]
    return torch.stack([q_ref(w, obs.double(), a.double()) for w in ws]).min(0).values


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("deactivate_vmap", [False, True])
def test_log_weight_fn_is_qmin(fixed_noise, sequential, deactivate_vmap):
    """``log_weight_fn`` = min_i Q_i(s, a), for chain-shaped actions, grads to a only."""
    torch.manual_seed(0)
    actor, _ = make_actor()
    critic = make_critic()
    if sequential:  # a critic that is not a single TensorDictModule
        critic = TensorDictSequential(critic)
    loss = MISALoss(
        actor,
        critic,
        num_mcmc_samples=K,
        num_burnin=1,
        deactivate_vmap=deactivate_vmap,
    )
    data = make_data([2, 3])
    loss(data)
    fn = fixed_noise[0]["fn"]
    obs = data["observation"]
    for lead in [(), (4,), (2, 3)]:
        a = (torch.rand(*lead, 2, 3, N_ACT) * 2 - 1).requires_grad_()
        value = fn(a)
        assert value.shape == a.shape[:-1]
        assert_close(
            value, energy_reference(loss, obs.expand(*lead, 2, 3, N_OBS), a), "Qmin"
        )
        value.sum().backward()
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def grads_of(loss, name, out):
    loss.zero_grad(set_to_none=True)
    out[name].backward(retain_graph=True)
    return {n: p.grad for n, p in loss.named_parameters()}


def nonzero(grads):
    return {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}


def test_each_loss_moves_only_its_parameters(fixed_noise):
    loss, _ = build(lagrange_tau=1.0)
    out = loss(make_data([5]))
    actor = nonzero(grads_of(loss, "loss_actor", out))
    assert actor and all(n.startswith("actor_network_params") for n in actor)
    critic = nonzero(grads_of(loss, "loss_qvalue", out))
    assert critic and all(n.startswith("qvalue_network_params") for n in critic)
    assert nonzero(grads_of(loss, "loss_alpha", out)) == {"log_alpha"}
    assert nonzero(grads_of(loss, "loss_alpha_prime", out)) == {"log_alpha_prime"}
    assert not any(
        p.requires_grad for p in loss.target_qvalue_network_params.values(True, True)
    )


def test_mi_critic_moves_only_t(fixed_noise):
    torch.manual_seed(0)
    actor, _ = make_actor()
    loss = MISALoss(
        actor, make_critic(), mi_critic=make_critic(), num_mcmc_samples=K, num_burnin=1
    )
    out = loss(make_data([5]))
    t = nonzero(grads_of(loss, "loss_mi_critic", out))
    assert t and all(n.startswith("mi_critic_network_params") for n in t)
    assert all(
        n.startswith("actor") for n in nonzero(grads_of(loss, "loss_actor", out))
    )
    assert all(
        n.startswith("qvalue") for n in nonzero(grads_of(loss, "loss_qvalue", out))
    )


def test_reduction(fixed_noise):
    data = make_data([5])
    outs = {}
    for reduction in ("none", "mean", "sum"):
        loss, actor_net = build(
            reduction=reduction, lagrange_tau=2.0, scalar_output_mode="non_tensor"
        )
        outs[reduction] = loss(data.clone())
    ref = reference(loss, actor_net, data, tau=2.0)
    assert outs["none"].batch_size == data.batch_size
    for key in LOSS_KEYS + ("loss_alpha_prime",):
        per_item = outs["none"][key]
        assert per_item.shape == (5,)
        assert_close(per_item, ref[key].detach(), key)
        assert_close(per_item.mean(), outs["mean"][key], key)
        assert_close(per_item.sum(), outs["sum"][key], key)
    # diagnostics: per transition with "none", their batch mean otherwise
    for key in ("entropy", "mi_bound", "q_gap", "hmc_acceptance_rate"):
        assert outs["none"][key].shape == (5,)
        for reduction in ("mean", "sum"):
            assert_close(outs["none"][key].mean(), outs[reduction][key], key)
    assert_close(outs["none"]["q_gap"], ref["_gap"].mean(0), "per-state q_gap")
    assert_close(outs["none"]["alpha"], ref["alpha"], "alpha as non-tensor")


def test_reduction_none_leaves_scalars_out_by_default():
    with pytest.warns(UserWarning, match="scalar_output_mode"):
        loss, _ = build(reduction="none")
    assert "alpha" not in loss.out_keys
    out = loss(make_data([5]))
    assert "alpha" not in out.keys() and out["loss_actor"].shape == (5,)


def test_batch_shapes_agree(fixed_noise):
    """A [2, 3] batch gives the losses of the same transitions as a [6] batch."""
    loss, _ = build(mi_estimator="dv")
    data = make_data([2, 3])
    out2 = loss(data)
    out1 = loss(data.reshape(6))
    for key in LOSS_KEYS + ("mi_bound", "q_gap"):
        assert_close(out2[key], out1[key], key)


FLAG_DTYPES = [torch.bool, torch.int64, torch.uint8, torch.int32, torch.float32]


@pytest.mark.parametrize("value_estimator", ["td0", "td_lambda"])
def test_flag_dtypes_give_the_same_target(fixed_noise, value_estimator):
    """0/1 done / terminated flags of any dtype give one TD target.

    TorchRL's estimators negate the flags with ``~``: an int64 0 would become
    -1 (flipping the bootstrap's sign) and a uint8 0 255.
    """
    data = make_data([6], seed=3)
    assert data["next", "terminated"].any() and not data["next", "terminated"].all()
    outs = {}
    for dtype in FLAG_DTYPES:
        loss, actor_net = build()
        if value_estimator == "td_lambda":
            loss.make_value_estimator(ValueEstimators.TDLambda, gamma=GAMMA, lmbda=0.9)
        batch = data.clone()
        for key in (("next", "done"), ("next", "terminated")):
            batch.set(key, batch.get(key).to(dtype))
        outs[dtype] = (loss(batch), batch["td_error"])
    ref_out, ref_td = outs[torch.bool]
    for out, td_error in outs.values():
        torch.testing.assert_close(td_error, ref_td, rtol=0, atol=0)
        for key in LOSS_KEYS:
            torch.testing.assert_close(out[key], ref_out[key], rtol=0, atol=0)
    if value_estimator == "td0":  # y = r + gamma (1 - terminated) min_i Q'_i(s', a')
        ref = reference(loss, actor_net, data)
        assert_close(ref_td, ref["td_error"], "td_error against the written-out y")


def test_set_keys(fixed_noise):
    torch.manual_seed(0)
    actor, actor_net = make_actor()
    loss = MISALoss(actor, make_critic(), num_mcmc_samples=K, num_burnin=1)
    ref = loss(make_data([4]))
    torch.manual_seed(0)
    actor2, _ = make_actor(obs_key="obs")
    loss2 = MISALoss(
        actor2, make_critic("obs", "act"), num_mcmc_samples=K, num_burnin=1
    )
    loss2.set_keys(
        action="act", reward="rew", done="dn", terminated="term", priority="prio"
    )
    loss2.load_state_dict(loss.state_dict())
    data = make_data(
        [4], obs_key="obs", action_key="act", reward="rew", done="dn", terminated="term"
    )
    out = loss2(data)
    for key in LOSS_KEYS + ("mi_bound",):
        assert_close(out[key], ref[key], key)
    assert "prio" in data.keys()
    assert ("next", "rew") in loss2.in_keys and "act" in loss2.in_keys


def test_state_dict_round_trip(fixed_noise):
    loss, _ = build(lagrange_tau=3.0)
    with torch.no_grad():
        loss.log_alpha.fill_(-0.7)
        loss.log_alpha_prime.fill_(0.2)
    data = make_data([5])
    ref = loss(data.clone())
    other, _ = build(seed=123, lagrange_tau=3.0)
    other.load_state_dict(loss.state_dict())
    out = other(data.clone())
    for key in LOSS_KEYS + ("loss_alpha_prime", "alpha", "alpha_prime"):
        assert_close(out[key], ref[key], key)
    state = loss.state_dict()
    assert "log_alpha" in state and "target_entropy" in state
    assert any(k.startswith("target_qvalue_network_params") for k in state)


def test_keyword_call(fixed_noise):
    loss, _ = build()
    data = make_data([5])
    ref = loss(data.clone())
    values = loss(
        observation=data["observation"],
        action=data["action"],
        next_observation=data["next", "observation"],
        next_reward=data["next", "reward"],
        next_done=data["next", "done"],
        next_terminated=data["next", "terminated"],
    )
    assert isinstance(values, tuple) and len(values) == len(loss.out_keys)
    for key, value in zip(loss.out_keys, values):
        assert_close(value, ref[key], key)


def test_vmap_and_loop_agree(fixed_noise):
    data = make_data([5])
    loss_v, _ = build()
    loss_l, _ = build(deactivate_vmap=True)
    out_v, out_l = loss_v(data.clone()), loss_l(data.clone())
    for key in LOSS_KEYS + ("mi_bound", "q_gap"):
        assert_close(out_v[key], out_l[key], key)
    gv = grads_of(loss_v, "loss_qvalue", out_v)
    gl = grads_of(loss_l, "loss_qvalue", out_l)
    for name in gv:
        if gv[name] is not None:
            assert_close(gv[name], gl[name], name)


def test_target_entropy_and_alpha():
    loss, _ = build(alpha_init=0.5)
    assert loss.target_entropy.item() == -N_ACT
    assert_close(loss._alpha, 0.5)
    fixed, _ = build(fixed_alpha=True, target_entropy=-0.5)
    assert not isinstance(fixed.log_alpha, nn.Parameter)
    assert fixed.target_entropy.item() == -0.5


def test_priority_weights_weight_every_loss(fixed_noise):
    """With weights w: each loss is sum_i w_i l_i / sum_i w_i of its terms l_i."""
    data = make_data([5])
    loss, actor_net = build(lagrange_tau=0.5)
    ref = reference(loss, actor_net, data, tau=0.5)
    w = torch.tensor([0.1, 2.0, 0.5, 1.0, 3.0])
    out = loss(data.clone().set("priority_weight", w))
    for key in LOSS_KEYS + ("loss_alpha_prime",):
        expected = (ref[key] * w.double()).sum() / w.double().sum()
        assert_close(out[key], expected.detach(), key)
    # [B, 1] weights as a buffer may store them
    out_col = loss(data.clone().set("priority_weight", w.unsqueeze(-1)))
    assert_close(out_col["loss_qvalue"], out["loss_qvalue"], "[B, 1] weights")
    ignoring, _ = build(lagrange_tau=0.5, use_prioritized_weights=False)
    plain = ignoring(data.clone().set("priority_weight", w))
    assert_close(plain["loss_qvalue"], ref["loss_qvalue"].mean().detach(), "off")
    with pytest.raises(ValueError, match=r"priority weights have shape \[5, 2\]"):
        loss(data.clone().set("priority_weight", torch.ones(5, 2)))


# -------------------------------------------------------------- bad inputs
def _cast_floats(data, dtype):
    return data.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.exclude(("next", "reward")), r"missing.*reward"),
        (lambda d: d.exclude("observation"), r"missing.*observation"),
        (
            lambda d: d.set("action", torch.zeros(5, N_ACT + 1)),
            r"action has shape \[5, 3\]",
        ),
        (lambda d: d.set(("next", "reward"), torch.zeros(5, 2)), r"reward.*shape"),
        (lambda d: d[:0], r"no transitions \(batch size \[0\]\)"),
        (
            lambda d: _cast_floats(d, torch.float64),
            r"is torch.float64 but the networks' parameters are torch.float32; cast",
        ),
        (
            lambda d: d.set("action", torch.zeros(5, N_ACT, dtype=torch.long)),
            "action.*must be a floating point tensor",
        ),
        (
            lambda d: d.set(("next", "done"), torch.zeros(5, 1, dtype=torch.complex64)),
            "0/1 flags",
        ),
    ],
)
def test_bad_input_without_value_checks(mutate, match):
    """Keys, shapes and dtypes are checked on every call (no host sync)."""
    loss, _ = build()
    assert loss.validate_inputs is False
    with pytest.raises(ValueError, match=match):
        loss(mutate(make_data([5])))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda d: d.set(("next", "reward"), torch.full((5, 1), float("nan"))),
            "reward.*NaN",
        ),
        (lambda d: d.set("action", torch.full((5, N_ACT), 1.5)), r"\[-1, 1\]"),
        (
            lambda d: d.set("observation", torch.full((5, N_OBS), float("inf"))),
            "observation",
        ),
        (
            lambda d: d.set(("next", "terminated"), torch.full((5, 1), 2)),
            "must be 0 or 1",
        ),
        (
            lambda d: d.set(("next", "done"), torch.full((5, 1), 0.5)),
            "must be 0 or 1",
        ),
        (
            lambda d: d.set("priority_weight", -torch.ones(5)),
            "priority weights must be finite and non-negative",
        ),
    ],
)
def test_bad_values_with_validate_inputs(mutate, match):
    loss, _ = build(validate_inputs=True)
    with pytest.raises(ValueError, match=match):
        loss(mutate(make_data([5])))


def test_float64_networks_take_float64_batches(fixed_noise):
    """A float64 loss refuses nothing of its own dtype and matches brute force."""
    loss, actor_net = build()
    loss = loss.double()
    data = _cast_floats(make_data([5]), torch.float64)
    out = loss(data)
    ref = reference(loss, actor_net, data)
    check_against_reference(out, ref, keys=LOSS_KEYS)
    with pytest.raises(ValueError, match="is torch.float32 but"):
        loss(make_data([5]))


class TwoHeadQ(QNet):
    """A critic with two outputs per state-action pair: not a Q-value."""

    def __init__(self):
        super().__init__()
        self.net[-1] = nn.Linear(HIDDEN, 2)


def test_critic_with_two_outputs_is_refused():
    torch.manual_seed(0)
    actor, _ = make_actor()
    critic = ValueOperator(TwoHeadQ(), in_keys=["observation", "action"])
    loss = MISALoss(actor, critic, num_mcmc_samples=K, num_burnin=1)
    # the first call: both critics at [a, a_1..a_k] of 5 states, 1 + K actions
    shapes = rf"of shape \[2, {1 + K}, 5, 2\], expected \[2, {1 + K}, 5, 1\]"
    with pytest.raises(ValueError, match=shapes):
        loss(make_data([5]))
    with pytest.raises(ValueError, match="mi_critic returned values of shape"):
        MISALoss(
            actor, make_critic(), mi_critic=critic, num_mcmc_samples=K, num_burnin=1
        )(make_data([5]))


def test_actor_must_be_tanh_normal():
    net = nn.Sequential(nn.Linear(N_OBS, 2 * N_ACT), NormalParamExtractor())
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    from torchrl.modules import IndependentNormal

    actor = ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=IndependentNormal
    )
    with pytest.raises(ValueError, match="TanhNormal.*IndependentNormal"):
        MISALoss(actor, make_critic())
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
    )
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        MISALoss(actor, make_critic())
    with pytest.raises(ValueError, match="stochastic actor"):
        MISALoss(module, make_critic())


NAN = float("nan")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mi_estimator": "nwj"}, "mi_estimator"),
        ({"mi_estimator": "ba", "unbiased_correction": True}, "correction"),
        ({"mi_estimator": "ba", "bc_term": False}, "no mutual-information"),
        ({"mi_estimator": "ba", "lagrange_tau": 1.0}, "lagrange_tau"),
        ({"sampler_mode": "nuts"}, "sampler_mode"),
        ({"num_mcmc_samples": 0}, "num_mcmc_samples"),
        ({"num_mcmc_samples": 5, "num_chains": 2}, "divisible by num_chains"),
        ({"reduction": "max"}, "reduction"),
        ({"alpha_init": 0.0}, r"alpha_init must be > 0.0"),
        ({"alpha_init": -1.0}, r"alpha_init must be > 0.0"),
        ({"alpha_init": NAN}, "alpha_init must be finite"),
        ({"target_entropy": None}, "target_entropy must be a number or 'auto'"),
        ({"target_entropy": NAN}, "target_entropy must be finite"),
        ({"target_entropy": "max"}, "target_entropy must be a number or 'auto'"),
        ({"min_q_weight": NAN}, "min_q_weight must be finite"),
        ({"min_q_weight": -1.0}, "min_q_weight must be >= 0.0"),
        ({"bc_weight": -0.5}, "bc_weight must be >= 0.0"),
        ({"unbiased_weight": -0.1}, "unbiased_weight must be >= 0.0"),
        ({"unbiased_weight": float("inf")}, "unbiased_weight must be finite"),
        ({"step_size": 0.0}, "step_size must be > 0.0"),
        ({"step_size": NAN}, "step_size must be finite"),
        ({"target_accept": 1.0}, r"target_accept must lie in \(0, 1\)"),
        ({"target_accept": NAN}, "target_accept must be finite"),
        ({"lagrange_tau": NAN}, "lagrange_tau must be finite"),
        ({"num_adaptation_steps": -1}, "num_adaptation_steps must be an integer"),
        ({"num_policy_samples": 0}, "num_policy_samples must be an integer >= 1"),
        ({"scalar_output_mode": "drop"}, "scalar_output_mode must be one of"),
        ({"use_prioritized_weights": "yes"}, "use_prioritized_weights must be"),
    ],
)
def test_bad_options(kwargs, match):
    actor, _ = make_actor()
    with pytest.raises(ValueError, match=match):
        MISALoss(actor, make_critic(), **kwargs)


def test_compiled_forward_matches_eager(fixed_noise):
    """torch.compile(loss) gives the eager losses (the sampler stays outside)."""
    loss, _ = build()
    data = make_data([5])
    ref = loss(data.clone())
    compiled = torch.compile(loss)
    out = compiled(data.clone())
    for key in LOSS_KEYS + ("mi_bound", "q_gap"):
        assert_close(out[key], ref[key], key)
    fn = fixed_noise[-1]["fn"]
    a = torch.rand(5, N_ACT) * 2 - 1
    assert_close(fn(a), energy_reference(loss, data["observation"], a), "Qmin")
