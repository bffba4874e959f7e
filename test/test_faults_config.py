"""Settings refused by name: the recipe's config, the loss's discount, the sampler's counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ValueEstimators

from torchrl_misa import MISALoss
from torchrl_misa.mcmc import hmc_sample

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "misa"


def make_cfg(*overrides):
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.2"):
        return compose(
            "config",
            overrides=["preset=demo", "logger.log_dir=unused", *overrides],
        )


def refusal(misa_script, cfg) -> str:
    with pytest.raises(misa_script.utils.ConfigError) as err:
        misa_script.utils.validate_config(cfg)
    return str(err.value)


# ------------------------------------------------------------- the recipe
@pytest.mark.parametrize("gamma", ["1.5", "-1", "nan", "inf"])
def test_discount_outside_zero_one_is_refused(misa_script, gamma):
    message = refusal(misa_script, make_cfg(f"loss.gamma={gamma}"))
    assert f"loss.gamma={gamma}:" in message


# numeric settings that are null by default but take numbers
NULLABLE_NUMBERS = (
    "loss.num_policy_samples",
    "loss.num_adaptation_steps",
    "loss.lagrange_tau",
    "replay_buffer.clip_actions",
)


def _numeric_keys(node, prefix=""):
    """Every number of a config container (bools are not numbers), by dotted key."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_keys(value, f"{prefix}{key}.")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix[:-1]


def test_every_numeric_setting_refuses_non_finite_numbers(misa_script):
    base = make_cfg()
    keys = sorted(
        set(_numeric_keys(OmegaConf.to_container(base, resolve=False)))
        | set(NULLABLE_NUMBERS)
    )
    assert {"loss.gamma", "optim.actor_lr", "env.seed", "num_agents"} <= set(keys)
    for key in keys:
        for value in (math.nan, math.inf, -math.inf):
            cfg = base.copy()
            OmegaConf.update(cfg, key, value)
            message = refusal(misa_script, cfg)
            assert f"{key}={value}:" in message, (key, message)


def test_negative_action_clip_names_its_key(misa_script):
    message = refusal(misa_script, make_cfg("replay_buffer.clip_actions=-0.5"))
    assert "replay_buffer.clip_actions=-0.5:" in message


def test_misa_loss_options_are_checked_before_the_data(misa_script):
    message = refusal(misa_script, make_cfg("loss.min_q_weight=-1.0"))
    assert "loss.min_q_weight must be >= 0" in message
    # a baseline does not read MISA's options
    misa_script.utils.validate_config(make_cfg("+algorithm=bc", "loss.min_q_weight=-1"))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("logger.backend=nonsense", "logger.backend=nonsense: choose one of csv"),
        ("loss.gamma=nan", "loss.gamma=nan: must be a finite number"),
        ("replay_buffer.clip_actions=-0.5", "replay_buffer.clip_actions=-0.5:"),
        ("network.actor_activation=gelu", "network.actor_activation=gelu: choose"),
    ],
)
def test_bad_settings_stop_the_run_before_the_data_loads(
    misa_script, tmp_path, override, expected
):
    # the dataset does not exist: loading it first would fail differently
    cfg = make_cfg(f"replay_buffer.dataset={tmp_path / 'missing.hdf5'}", override)
    with pytest.raises(misa_script.utils.ConfigError, match=expected):
        misa_script.misa_offline.train(cfg, tmp_path)


# --------------------------------------------------------------- the loss
class _QNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(5, 1)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1))


def _loss():
    net = nn.Sequential(nn.Linear(3, 4), NormalParamExtractor())
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=Bounded(-1.0, 1.0, (2,)),
        distribution_class=TanhNormal,
    )
    critic = ValueOperator(_QNet(), in_keys=["observation", "action"])
    return MISALoss(actor, critic, num_mcmc_samples=2, num_burnin=1)


@pytest.mark.parametrize("gamma", [1.5, -1.0, math.nan, torch.tensor(math.nan)])
def test_make_value_estimator_refuses_a_bad_discount(gamma):
    loss = _loss()
    with pytest.raises(ValueError, match="gamma"):
        loss.make_value_estimator(gamma=gamma)
    with pytest.raises(ValueError, match="lmbda"):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=2.0)


def test_make_value_estimator_keeps_a_good_discount():
    loss = _loss()
    loss.make_value_estimator(gamma=0.9)
    assert float(loss._value_estimator.gamma) == pytest.approx(0.9)
    loss.make_value_estimator(gamma=1.0)
    assert float(loss._value_estimator.gamma) == 1.0


# ------------------------------------------------------------ the sampler
@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_burnin": 1.0}, "num_burnin"), ({"num_chains": 2.0}, "num_chains")],
)
def test_sampler_counts_given_as_floats_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer"):
        hmc_sample(
            lambda x: -0.5 * (x**2).sum(-1), torch.zeros(3, 2), num_samples=4, **kwargs
        )
