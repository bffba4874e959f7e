"""The ablation variants of the paper's Table 1, each against brute force.

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
    log_mean_exp,
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
from torchrl_misa.objectives._misa_bounds import (
    correction_weight,
    critic_gap,
    log_normaliser,
)

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
    loss, actor_net, t_net = build_t(reduction="none", scalar_output_mode="exclude")
    data = make_data([5])
    out = loss(data.clone())
    ref = reference(loss, actor_net, data, t_net=t_net)
    assert_close(out["loss_mi_critic"], ref["loss_mi_critic"].detach(), "per state")


def test_policy_samples_count(fixed_noise):
    """k policy samples for the log-mean-exp; num_mcmc_samples for the sampler.

    The brute force draws its policy samples and its MCMC samples with their
    own counts: swapping the two in the loss changes every regularised entry.
    """
    k_pi, k_mc = K + 1, K - 1
    torch.manual_seed(0)
    actor, actor_net = make_actor()
    loss = MISALoss(
        actor,
        make_critic(),
        num_mcmc_samples=k_mc,
        num_policy_samples=k_pi,
        num_burnin=2,
    )
    data = make_data([5])
    out = loss(data)
    assert fixed_noise[0]["num_samples"] == k_mc and fixed_noise[0]["num_burnin"] == 2
    ref = reference(loss, actor_net, data, k_pi=k_pi, k_mc=k_mc)
    check_against_reference(out, ref)
    swapped = reference(loss, actor_net, data, k_pi=k_mc, k_mc=k_pi)
    assert not torch.allclose(out["q_gap"].double(), swapped["q_gap"])


def test_f_and_dv_weights_reweight_states():
    """For DV the per-state weights average to one; for f they are Z(s)/e."""
    e_pi = torch.randn(K, 6)
    z = e_pi.exp().mean(0)
    w_dv = correction_weight("dv", e_pi)
    assert_close(w_dv.mean(), 1.0, "dv weights mean")
    assert_close(w_dv, z / z.mean(), "dv weights")
    assert_close(correction_weight("f", e_pi), z / math.e, "f weights")
    assert correction_weight("misa", e_pi) == 1.0


def test_dv_pools_only_the_valid_states():
    """With a loss mask, DV's pooled terms are those of the valid states alone."""
    q_pi, q_data = torch.randn(2, K, 6), torch.randn(2, 6)
    valid = torch.tensor([True, False, True, True, False, True])
    gap = critic_gap("dv", q_pi, q_data, valid)
    pooled = log_mean_exp(q_pi[..., valid].double(), (1, 2))  # [n_q]
    assert_close(gap[:, valid], pooled[:, None] - q_data[:, valid], "dv gap")
    e_pi = q_pi.min(0).values
    norm = log_normaliser("dv", e_pi, valid)
    assert_close(norm[valid], log_mean_exp(e_pi[:, valid].double(), (0, 1)).expand(4))
    w = correction_weight("dv", e_pi, valid)
    z = e_pi[:, valid].exp().mean(0)
    assert_close(w[valid], z / z.mean(), "dv weights of the valid states")
    # per-state estimators do not pool: the mask changes nothing
    for estimator in ("misa", "f"):
        torch.testing.assert_close(
            critic_gap(estimator, q_pi, q_data, valid),
            critic_gap(estimator, q_pi, q_data),
        )


def test_f_bound_overflow_is_a_clear_error(fixed_noise):
    """exp(Q - 1) overflows float32 for Q above ~85: MISA-f says so instead of NaN."""
    loss, _ = build(mi_estimator="f", validate_inputs=True)
    data = make_data([4])
    assert torch.isfinite(loss(data.clone())["loss_qvalue"])
    biases = [k for k in loss.qvalue_network_params.keys(True, True) if k[-1] == "bias"]
    with torch.no_grad():
        loss.qvalue_network_params[biases[-1]].add_(200.0)  # every Q near 200
    with pytest.raises(ValueError, match=r"exp\(Q - 1\) overflowed"):
        loss(data.clone())
    # Without the value checks (no host sync) the overflow shows as inf.
    loss.validate_inputs = False
    assert not torch.isfinite(loss(data.clone())["loss_qvalue"])
    # The same values under the shift-invariant estimators stay finite.
    for estimator in ("misa", "dv"):
        loss.mi_estimator = estimator
        out = loss(data.clone())
        assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_actor"])
