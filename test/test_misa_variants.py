"""The ablation variants of Table 1 (MISA_SPEC §3), each against brute force.

Each variant is checked twice: its loss entries equal the spec's formulas
recomputed in ``test_misa_loss.reference``, and, against the default MISA on
the same injected samples, exactly the entries it should change do change.
"""

from __future__ import annotations

import math

import pytest
import torch

from test_misa_loss import (
    assert_close,
    build,
    check_against_reference,
    energy_reference,
    K,
    make_actor,
    make_critic,
    make_data,
    member_weights,
    N_ACT,
    N_OBS,
    q_ref,
    reference,
)
from test_misa_loss import fixed_noise_fixture  # noqa: F401
from torchrl_misa import MISALoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

# name: (constructor options, reference options, entries equal to MISA's)
VARIANTS = {
    "no-BA": (
        {"bc_term": False},
        {"bc_term": False},
        {"loss_qvalue", "q_gap", "mi_bound", "loss_alpha"},
    ),
    "MISA-biased": (
        {"unbiased_correction": False},
        {"correction": False},
        {"loss_qvalue", "q_gap", "mi_bound", "loss_alpha"},
    ),
    "MISA-DV": ({"mi_estimator": "dv"}, {"estimator": "dv"}, {"loss_alpha"}),
    "MISA-f": ({"mi_estimator": "f"}, {"estimator": "f"}, {"loss_alpha"}),
    "BA": (
        {"mi_estimator": "ba"},
        {"estimator": "ba", "correction": False},
        {"q_gap", "loss_alpha"},
    ),
    "weights": (
        {"min_q_weight": 2.0, "bc_weight": 0.3, "unbiased_weight": 0.7},
        {"g1": 2.0, "bc_weight": 0.3, "uw": 0.7},
        {"q_gap", "mi_bound", "loss_alpha"},
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_brute_force(fixed_noise, name):
    options, ref_options, unchanged = VARIANTS[name]
    data = make_data([6])
    loss, actor_net = build(**options)
    out = loss(data.clone())
    ref = reference(loss, actor_net, data, **ref_options)
    check_against_reference(out, ref)

    base_loss, _ = build()
    base = base_loss(data.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_alpha", "q_gap", "mi_bound"):
        same = torch.allclose(out[key], base[key], rtol=1e-6, atol=1e-7)
        assert same == (key in unchanged), f"{name}: {key} equal to MISA's: {same}"


def test_variant_terms_differ_by_exactly_the_term(fixed_noise):
    """no-BA drops bc_weight * log pi(a|s); MISA-biased drops the correction."""
    data = make_data([6])
    loss, actor_net = build()
    ref = reference(loss, actor_net, data)
    base = loss(data.clone())["loss_actor"]
    no_ba = build(bc_term=False)[0](data.clone())["loss_actor"]
    biased = build(unbiased_correction=False)[0](data.clone())["loss_actor"]
    logp_data = (
        -(
            ref["loss_actor"]
            - reference(loss, actor_net, data, bc_term=False)["loss_actor"]
        )
        / 0.5
    )
    assert_close(no_ba - base, 0.5 * logp_data.mean().detach(), "no-BA difference")
    corr = (
        ref["loss_actor"]
        - reference(loss, actor_net, data, correction=False)["loss_actor"]
    )
    assert_close(base - biased, corr.mean().detach(), "correction")
    assert corr.abs().sum() > 0 and logp_data.abs().sum() > 0


@pytest.mark.parametrize(
    "options", [{"mi_estimator": "ba"}, {"unbiased_correction": False}]
)
def test_no_sampler_without_correction(fixed_noise, options):
    loss, _ = build(**options)
    out = loss(make_data([4]))
    assert fixed_noise == []
    assert "hmc_acceptance_rate" not in out.keys()
    assert "hmc_acceptance_rate" not in loss.out_keys


@pytest.mark.parametrize("estimator", ["misa", "dv", "f"])
def test_lagrange_matches_brute_force(fixed_noise, estimator):
    data = make_data([6])
    loss, actor_net = build(lagrange_tau=0.5, mi_estimator=estimator)
    out = loss(data.clone())
    ref = reference(loss, actor_net, data, tau=0.5, estimator=estimator)
    check_against_reference(
        out, ref, keys=("loss_qvalue", "loss_alpha_prime", "alpha_prime")
    )
    # d loss_alpha' / d log alpha' = -alpha' * g1 * mean_i (gap_i - tau)
    (grad,) = torch.autograd.grad(out["loss_alpha_prime"], loss.log_alpha_prime)
    assert_close(grad, ref["loss_alpha_prime"].mean().detach(), "alpha' gradient")
    assert_close(loss.log_alpha_prime.detach(), 1.0, "log alpha' init")


def test_alpha_prime_is_clamped(fixed_noise):
    loss, _ = build(lagrange_tau=0.5)
    with torch.no_grad():
        loss.log_alpha_prime.fill_(20.0)  # exp(20) > 1e6
    out = loss(make_data([4]))
    assert_close(out["alpha_prime"], 1e6, "alpha'")


def build_t(seed=0, **kwargs):
    torch.manual_seed(seed)
    actor, actor_net = make_actor()
    t_net = make_critic()
    loss = MISALoss(
        actor,
        make_critic(),
        mi_critic=t_net,
        num_mcmc_samples=K,
        num_burnin=1,
        **kwargs,
    )
    with torch.no_grad():
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(0.1 * torch.randn_like(p))
    return loss, actor_net, t_net


@pytest.mark.parametrize("estimator", ["misa", "dv", "f"])
def test_misa_t_matches_brute_force(fixed_noise, estimator):
    """MISA-T: T estimates the bound, drives the correction; Q keeps its TD loss only."""
    data = make_data([6])
    loss, actor_net, t_net = build_t(mi_estimator=estimator)
    out = loss(data.clone())
    ref = reference(loss, actor_net, data, t_net=t_net, estimator=estimator)
    check_against_reference(
        out,
        ref,
        keys=("loss_actor", "loss_qvalue", "loss_mi_critic", "mi_bound", "loss_alpha"),
    )
    assert_close(out["loss_mi_critic"], -out["mi_bound"], "loss_mi_critic = -bound")
    # the sampler tilts the policy by T, not by Q
    fn = fixed_noise[0]["fn"]
    a = torch.rand(3, 6, N_ACT) * 2 - 1
    obs = data["observation"].expand(3, 6, N_OBS)
    w = member_weights(loss.mi_critic_network_params)
    assert_close(fn(a), q_ref(w, obs.double(), a.double()), "T as log weight")
    assert not torch.allclose(fn(a).double(), energy_reference(loss, obs, a))


def test_misa_t_reduction_none(fixed_noise):
    loss, _, _ = build_t(reduction="none")
    out = loss(make_data([5]))
    assert out["loss_mi_critic"].shape == (5,)


def test_policy_samples_count(fixed_noise):
    """k policy samples for the log-mean-exp; num_mcmc_samples for the sampler."""
    torch.manual_seed(0)
    actor, _ = make_actor()
    loss = MISALoss(
        actor, make_critic(), num_mcmc_samples=3, num_policy_samples=K, num_burnin=2
    )
    out = loss(make_data([5]))
    assert fixed_noise[0]["num_samples"] == 3 and fixed_noise[0]["num_burnin"] == 2
    assert torch.isfinite(out["loss_qvalue"])


def test_f_and_dv_weights_reweight_states(fixed_noise):
    """For DV the per-state weights average to one; for f they are Z(s)/e."""
    data = make_data([6])
    loss, actor_net = build(mi_estimator="dv")
    loss(data.clone())
    e_pi = torch.randn(K, 6)
    w_dv = loss._correction_weight(e_pi)
    assert_close(w_dv.mean(), 1.0, "dv weights mean")
    z = e_pi.exp().mean(0)
    assert_close(w_dv, z / z.mean(), "dv weights")
    loss.mi_estimator = "f"
    assert_close(loss._correction_weight(e_pi), z / math.e, "f weights")


def test_f_bound_overflow_is_a_clear_error(fixed_noise):
    """exp(Q - 1) overflows float32 for Q above ~85: MISA-f says so instead of NaN."""
    loss, _ = build(mi_estimator="f")
    data = make_data([4])
    assert torch.isfinite(loss(data.clone())["loss_qvalue"])
    biases = [k for k in loss.qvalue_network_params.keys(True, True) if k[-1] == "bias"]
    with torch.no_grad():
        loss.qvalue_network_params[biases[-1]].add_(200.0)  # every Q near 200
    with pytest.raises(ValueError, match=r"exp\(Q - 1\) overflowed"):
        loss(data.clone())
    # The same values under the shift-invariant estimators stay finite.
    for estimator in ("misa", "dv"):
        loss.mi_estimator = estimator
        out = loss(data.clone())
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_actor"])
