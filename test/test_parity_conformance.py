"""MISALoss against the authors' JAX MISA (github.com/sail-sg/MISA) at the same weights and batch.

``test/fixtures/misa_authors_losses.npz`` was made by
``benchmarks/parity/make_fixture.py``: the authors' training step evaluated
for 2000 random keys at fixed weights (16-16 networks, observations of size 3,
actions of size 2, a batch of 32, k = 8), its policy, critic (sum of both) and
temperature losses recorded per draw. Here the same weights go into torch
networks of the authors' parameterisation and ``MISALoss`` is evaluated for
1000 draws of its own; the means must agree within 4 standard errors of their
difference. No JAX is needed.

The MCMC correction (the unbiased actor loss) is compared with our emulation of
their sampler, ``sampler_mode="authors"``, on fewer draws: each runs the
sampler on one batch of 32, as their step does.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

from torchrl_misa import MISALoss

FIXTURE = Path(__file__).parent / "fixtures" / "misa_authors_losses.npz"
DRAWS = 1000  # of ours; the fixture holds 2000 of theirs
UNBIASED_DRAWS = 24  # one batch of 32 per call: the sampler's step size is shared by it
LAYERS = ("Dense_0", "Dense_1", "Dense_2")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # small tensors: threads only contend (a loaded 2-core machine: 10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


class _AuthorsHead(nn.Module):
    """The authors' TanhGaussianPolicy head: mean clipped to [-9, 9], log-std ``m * raw + b`` clipped to [-5, 2]."""

    def __init__(self, multiplier: float, offset: float):
        super().__init__()
        self.multiplier = nn.Parameter(torch.tensor(multiplier))
        self.offset = nn.Parameter(torch.tensor(offset))

    def forward(self, out):
        loc, raw = out.chunk(2, -1)  # jnp.split(out, 2, -1): mean first
        log_std = (self.multiplier * raw + self.offset).clamp(-5.0, 2.0)
        return loc.clamp(-9.0, 9.0), log_std.exp()


def _load_mlp(mlp: MLP, ref: dict, prefix: str) -> MLP:
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, name in zip(linears, LAYERS):
            # flax kernels are [in, out]; torch weights [out, in]
            linear.weight.copy_(torch.from_numpy(ref[f"{prefix}/{name}/kernel"]).T)
            linear.bias.copy_(torch.from_numpy(ref[f"{prefix}/{name}/bias"]))
    return mlp


def _mlp(ref, prefix, in_features, out_features, activation):
    mlp = MLP(
        in_features=in_features,
        out_features=out_features,
        num_cells=[16, 16],
        activation_class=activation,
    )
    return _load_mlp(mlp, ref, prefix)


def _setting(ref, name):
    return ref[f"setting/{name}"].item()


def _make_loss(ref, **overrides) -> MISALoss:
    obs_dim, act_dim = _setting(ref, "obs_dim"), _setting(ref, "action_dim")
    head = _AuthorsHead(
        _setting(ref, "log_std_multiplier"), _setting(ref, "log_std_offset")
    )
    net = nn.Sequential(_mlp(ref, "policy", obs_dim, 2 * act_dim, nn.ReLU), head)
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=Bounded(-1.0, 1.0, (act_dim,)),
        distribution_class=TanhNormal,
    )
    # critic: ELU MLP on [observation, action], as FullyConnectedQFunction
    critic = ValueOperator(
        _mlp(ref, "qf1", obs_dim + act_dim, 1, nn.ELU),
        in_keys=["observation", "action"],
    )
    kwargs = {
        "num_mcmc_samples": _setting(ref, "k"),
        "unbiased_correction": False,
        "min_q_weight": _setting(ref, "min_q_weight"),
        "bc_weight": _setting(ref, "bc_weight"),
        "unbiased_weight": _setting(ref, "unbiased_weight"),
        "num_burnin": _setting(ref, "num_burnin"),
        "num_leapfrog": _setting(ref, "num_leapfrog"),
        "step_size": float(_setting(ref, "step_size")),
        "target_entropy": _setting(ref, "target_entropy"),
        "alpha_init": math.exp(_setting(ref, "log_alpha")),
        "reduction": "none",
    }
    kwargs.update(overrides)
    loss = MISALoss(actor, critic, **kwargs)
    loss.make_value_estimator(gamma=_setting(ref, "discount"))
    with torch.no_grad():
        for params, prefix in (
            (loss.qvalue_network_params, ""),
            (loss.target_qvalue_network_params, "target_"),
        ):
            for i, q in enumerate(("qf1", "qf2")):
                for j, name in enumerate(LAYERS):
                    kernel = torch.from_numpy(ref[f"{prefix}{q}/{name}/kernel"])
                    bias = torch.from_numpy(ref[f"{prefix}{q}/{name}/bias"])
                    params.get(("module", str(2 * j), "weight")).data[i].copy_(kernel.T)
                    params.get(("module", str(2 * j), "bias")).data[i].copy_(bias)
    return loss


def _batch(ref, repeats: int) -> TensorDict:
    """The fixture's batch, ``repeats`` copies end to end (one copy = one draw)."""

    def tile(name):
        x = torch.from_numpy(ref[f"batch/{name}"])
        return x.repeat(repeats, *([1] * (x.ndim - 1)))

    n = repeats * _setting(ref, "batch_size")
    dones = tile("dones").bool().unsqueeze(-1)
    return TensorDict(
        {
            "observation": tile("observations"),
            "action": tile("actions"),
            ("next", "observation"): tile("next_observations"),
            ("next", "reward"): tile("rewards").unsqueeze(-1),
            ("next", "done"): dones,
            ("next", "terminated"): dones,
        },
        [n],
    )


def _our_draws(ref, draws=DRAWS, **overrides) -> dict:
    """Per-draw batch means of our losses: every draw sees the batch with fresh samples."""
    torch.manual_seed(0)
    loss = _make_loss(ref, **overrides)
    with torch.no_grad():
        out = loss(_batch(ref, draws))
    b = _setting(ref, "batch_size")
    return {
        name: out[key].reshape(draws, b).mean(1).double().numpy()
        for name, key in (
            ("actor", "loss_actor"),
            ("critic", "loss_qvalue"),
            ("alpha", "loss_alpha"),
        )
    }


def _z(ours: np.ndarray, theirs: np.ndarray, shift: float = 0.0) -> float:
    """``(mean(ours) - mean(theirs) - shift)`` in standard errors of the difference."""
    se = math.sqrt(ours.var(ddof=1) / len(ours) + theirs.var(ddof=1) / len(theirs))
    return (ours.mean() - theirs.mean() - shift) / se


def _critic_shift(ref, min_q_weight=None) -> float:
    """Our critic loss minus theirs, exactly, for the same draws.

    Both regularise critic i with ``min_q_weight * (logsumexp_j Q_i(s, a_j) - c - Q_i(s, a))``
    over k policy samples; we take c = log k (a log-mean-exp), their code
    c = log(batch size). Summed over the two critics, ours is larger by
    ``2 * min_q_weight * (log B - log k)``.
    """
    w = _setting(ref, "min_q_weight") if min_q_weight is None else min_q_weight
    batch, k = _setting(ref, "batch_size"), _setting(ref, "k")
    return 2 * w * (math.log(batch) - math.log(k))


@pytest.fixture(scope="module")
def ours(ref):
    return _our_draws(ref)


def test_fixture_is_the_stated_setting(ref):
    assert ref["draws/actor"].shape == (2000,)
    assert ref["policy/Dense_0/kernel"].shape == (3, 16)
    assert ref["qf1/Dense_2/kernel"].shape == (16, 1)
    # the weights make the losses depend on what is checked: some log-stds
    # reach the clip, the critics' targets differ from the critics
    assert not np.allclose(ref["qf1/Dense_2/kernel"], ref["target_qf1/Dense_2/kernel"])


@pytest.mark.parametrize("name", ["actor", "critic", "alpha"])
def test_biased_losses_match_the_authors(ref, ours, name):
    shift = _critic_shift(ref) if name == "critic" else 0.0
    z = _z(ours[name], ref[f"draws/{name}"], shift)
    assert abs(z) < 4, (
        f"{name}: ours {ours[name].mean():.4f} vs the authors' "
        f"{ref[f'draws/{name}'].mean():.4f} (+ {shift:.4f}): {z:.1f} standard errors"
    )


def test_comparison_detects_a_ten_percent_min_q_weight_change(ref):
    """The critic check has the power to see a 10% error in the regulariser's weight."""
    w = 1.1 * _setting(ref, "min_q_weight")
    ours = _our_draws(ref, min_q_weight=w)
    # the known constant follows the weight: only the regulariser's O(1) part is off
    z = _z(ours["critic"], ref["draws/critic"], _critic_shift(ref, w))
    assert abs(z) > 4, z


def test_unbiased_actor_loss_matches_the_authors_with_their_sampler(ref):
    """Their policy loss with the MCMC correction against ours with ``sampler_mode="authors"``."""
    torch.manual_seed(0)
    loss = _make_loss(ref, unbiased_correction=True, sampler_mode="authors")
    batch = _batch(ref, 1)
    with torch.no_grad():
        ours = np.array(
            [
                loss(batch.clone())["loss_actor"].mean().item()
                for _ in range(UNBIASED_DRAWS)
            ]
        )
    theirs = ref["draws/actor_unbiased"]
    # the correction moves their loss well beyond the noise: the check sees it
    assert abs(_z(ref["draws/actor"], theirs)) > 40
    z = _z(ours, theirs)
    assert (
        abs(z) < 4
    ), f"ours {ours.mean():.4f} vs theirs {theirs.mean():.4f}: {z:.1f} SE"
