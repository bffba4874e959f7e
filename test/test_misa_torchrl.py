"""MISALoss through the checks TorchRL runs on each of its losses.

The class follows the layout of TorchRL's per-loss tests (``TestSAC``,
``TestCQL``): mock networks and data built by ``_create_*`` methods, the
value-estimator sweep, the input left unchanged, gradients per loss, vmap,
state dicts, shared layers, multi-step batches, key handling, reductions,
prioritised weights and the target-updater warning. The sampler runs for
real, with few samples.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from tensordict import assert_allclose_td, TensorDict
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule as ProbMod,
    ProbabilisticTensorDictSequential as ProbSeq,
    TensorDictModule as Mod,
    TensorDictSequential as Seq,
)
from torch import nn

import torchrl_misa.mcmc as mcmc
from torchrl._utils import rl_warnings
from torchrl.data import (
    Bounded,
    LazyTensorStorage,
    TensorDictPrioritizedReplayBuffer,
)
from torchrl.data.postprocs.postprocs import MultiStep
from torchrl.data.replay_buffers.samplers.prioritized import SumSegmentTreeFp32
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators
from torchrl_misa import MISALoss

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    ),
]
SUPPORTED = [ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda]
FEW_SAMPLES = {"num_mcmc_samples": 4, "num_burnin": 1}


def _warns_no_updater():
    if rl_warnings():
        return pytest.warns(UserWarning, match="No target network updater")
    return contextlib.nullcontext()


class _check_td_steady:
    """The input's entries keep their values (new entries may appear)."""

    def __init__(self, td):
        self.td_clone = td.clone()
        self.td = td

    def __enter__(self):
        pass

    def __exit__(self, exc_type, exc_val, exc_tb):
        assert_allclose_td(
            self.td,
            self.td_clone,
            intersection=True,
            msg="Some keys have been modified in the tensordict!",
        )


def _loss_keys(out):
    return [k for k in out.keys() if k.startswith("loss_")]


def _zero(p):
    return p.grad is None or (p.grad == 0).all()


class TestMISA:
    seed = 0

    # --------------------------------------------------------------- mocks
    def _create_mock_actor(
        self,
        obs_dim=3,
        action_dim=4,
        device="cpu",
        observation_key="observation",
        action_key="action",
    ):
        action_spec = Bounded(
            -torch.ones(action_dim), torch.ones(action_dim), (action_dim,)
        )
        net = nn.Sequential(nn.Linear(obs_dim, 2 * action_dim), NormalParamExtractor())
        module = Mod(net, in_keys=[observation_key], out_keys=["loc", "scale"])
        actor = ProbabilisticActor(
            module=module,
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            spec=action_spec,
            distribution_class=TanhNormal,
        )
        return actor.to(device)

    def _create_mock_qvalue(
        self,
        obs_dim=3,
        action_dim=4,
        device="cpu",
        observation_key="observation",
        action_key="action",
    ):
        class ValueClass(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(obs_dim + action_dim, 1)

            def forward(self, obs, act):
                return self.linear(torch.cat([obs, act], -1))

        qvalue = ValueOperator(
            module=ValueClass(),
            in_keys=[observation_key, action_key],
            out_keys=["state_action_value"],
        )
        return qvalue.to(device)

    def _create_mock_common_layer_setup(self, n_obs=3, n_act=4, n_hidden=2, batch=8):
        """An actor and a critic sharing a trunk ``obs -> hidden``."""

        class QValueClass(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear1 = nn.Linear(n_hidden + n_act, n_hidden)
                self.linear2 = nn.Linear(n_hidden, 1)

            def forward(self, hidden, act):
                return self.linear2(
                    torch.relu(self.linear1(torch.cat([hidden, act], -1)))
                )

        common = Mod(
            MLP(num_cells=4, in_features=n_obs, depth=3, out_features=n_hidden),
            in_keys=["obs"],
            out_keys=["hidden"],
        )
        actor = ProbSeq(
            common,
            Mod(
                MLP(in_features=n_hidden, out_features=2 * n_act, num_cells=4, depth=1),
                in_keys=["hidden"],
                out_keys=["param"],
            ),
            Mod(NormalParamExtractor(), in_keys=["param"], out_keys=["loc", "scale"]),
            ProbMod(
                in_keys=["loc", "scale"],
                out_keys=["action"],
                distribution_class=TanhNormal,
            ),
        )
        qvalue = Seq(
            common,
            Mod(
                QValueClass(),
                in_keys=["hidden", "action"],
                out_keys=["state_action_value"],
            ),
        )
        td = self._create_mock_data_misa(
            batch=batch, obs_dim=n_obs, action_dim=n_act, observation_key="obs"
        )
        return actor, qvalue, common, td

    def _create_mock_data_misa(
        self,
        batch=16,
        obs_dim=3,
        action_dim=4,
        device="cpu",
        observation_key="observation",
        action_key="action",
        done_key="done",
        terminated_key="terminated",
        reward_key="reward",
    ):
        obs = torch.randn(batch, obs_dim, device=device)
        next_obs = torch.randn(batch, obs_dim, device=device)
        action = torch.rand(batch, action_dim, device=device) * 1.8 - 0.9
        reward = torch.randn(batch, 1, device=device)
        done = torch.zeros(batch, 1, dtype=torch.bool, device=device)
        terminated = torch.zeros(batch, 1, dtype=torch.bool, device=device)
        return TensorDict(
            {
                observation_key: obs,
                "next": {
                    observation_key: next_obs,
                    done_key: done,
                    terminated_key: terminated,
                    reward_key: reward,
                },
                action_key: action,
            },
            batch_size=(batch,),
            device=device,
        )

    def _create_seq_mock_data_misa(
        self, batch=4, T=5, obs_dim=3, action_dim=4, device="cpu", mask=None
    ):
        total_obs = torch.randn(batch, T + 1, obs_dim, device=device)
        obs, next_obs = total_obs[:, :T], total_obs[:, 1:]
        action = torch.rand(batch, T, action_dim, device=device) * 1.8 - 0.9
        reward = torch.randn(batch, T, 1, device=device)
        done = torch.zeros(batch, T, 1, dtype=torch.bool, device=device)
        terminated = torch.zeros(batch, T, 1, dtype=torch.bool, device=device)
        if mask is None:
            mask = torch.ones(batch, T, dtype=torch.bool, device=device)
        return TensorDict(
            {
                "observation": obs.masked_fill(~mask.unsqueeze(-1), 0.0),
                "next": {
                    "observation": next_obs.masked_fill(~mask.unsqueeze(-1), 0.0),
                    "done": done,
                    "terminated": terminated,
                    "reward": reward.masked_fill(~mask.unsqueeze(-1), 0.0),
                },
                "collector": {"mask": mask},
                "action": action.masked_fill(~mask.unsqueeze(-1), 0.0),
            },
            batch_size=(batch, T),
            names=[None, "time"],
            device=device,
        )

    def _create_loss(self, device="cpu", **kwargs):
        actor = self._create_mock_actor(device=device)
        qvalue = self._create_mock_qvalue(device=device)
        if kwargs.pop("mi_critic", False):
            kwargs["mi_critic"] = self._create_mock_qvalue(device=device)
        return MISALoss(actor, qvalue, **{**FEW_SAMPLES, **kwargs})

    # --------------------------------------------- TorchRL's base behaviour
    @classmethod
    def reset_parameters_recursive_test(cls, loss_fn):
        def get_params(loss_fn):
            for key, item in loss_fn.__dict__.items():
                if isinstance(item, nn.Module):
                    params = loss_fn._modules.get(f"{key}_params", None)
                    target = loss_fn._modules.get(f"target_{key}_params", None)
                    if params is not None:
                        yield f"{key}_params", params._param_td
                    if target is not None:
                        yield f"target_{key}_params", target

        old_params = {}
        for name, param in get_params(loss_fn):
            with torch.no_grad():
                param += 1000  # moved far away, so that a reset must change them
            old_params[name] = param.clone()
        assert old_params
        loss_fn.reset_parameters_recursive()
        for name, param in get_params(loss_fn):
            assert (param != old_params[name]).any(), name

    def test_reset_parameters_recursive(self):
        loss_fn = self._create_loss(mi_critic=True)
        self.reset_parameters_recursive_test(loss_fn)

    @pytest.mark.parametrize(
        "bad",
        [
            {"num_mcmc_samples": 0},
            {"mi_estimator": "mine"},
            {"lagrange_tau": 5.0, "mi_estimator": "ba"},
            {"target_accept": 1.5},
            {"bc_term": False, "mi_estimator": "ba"},
        ],
    )
    def test_misa_check_options(self, bad):
        # without networks, the same verdict as the constructor's
        defaults = {
            name: p.default
            for name, p in inspect.signature(MISALoss.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        names = inspect.signature(MISALoss.check_options).parameters
        options = {name: defaults[name] for name in names}
        options.update(reduction="mean", mi_critic=None)
        MISALoss.check_options(**options)
        with pytest.raises(ValueError) as from_check:
            MISALoss.check_options(**{**options, **bad})
        with pytest.raises(ValueError) as from_loss:
            self._create_loss(**bad)
        assert str(from_check.value) == str(from_loss.value)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("td_est", list(ValueEstimators) + [None])
    @pytest.mark.parametrize(
        "variant", ["misa", "lagrange", "mi_critic", "ba", "biased"]
    )
    def test_misa(self, device, td_est, variant):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa(device=device)
        kwargs = {
            "misa": {},
            "lagrange": {"lagrange_tau": 1.0},
            "mi_critic": {"mi_critic": True},
            "ba": {"mi_estimator": "ba"},
            "biased": {"unbiased_correction": False},
        }[variant]
        loss_fn = self._create_loss(device=device, **kwargs)
        if td_est is not None and td_est not in SUPPORTED:
            with pytest.raises(NotImplementedError):
                loss_fn.make_value_estimator(td_est)
            return
        if td_est is not None:
            loss_fn.make_value_estimator(td_est)

        keys_before = set(td.keys(True, True))
        with _check_td_steady(td), _warns_no_updater():
            loss = loss_fn(td)
        # the input gains the priority entry, nothing else
        assert set(td.keys(True, True)) - keys_before == {loss_fn.tensor_keys.priority}
        assert td[loss_fn.tensor_keys.priority].shape == td.shape

        # each loss moves its own parameters, and only those
        owners = {
            "loss_actor": "actor_network_params",
            "loss_qvalue": "qvalue_network_params",
            "loss_mi_critic": "mi_critic_network_params",
            "loss_alpha": "log_alpha",
            "loss_alpha_prime": "log_alpha_prime",
        }
        expected = {"loss_actor", "loss_qvalue", "loss_alpha"}
        expected |= {"loss_alpha_prime"} if variant == "lagrange" else set()
        expected |= {"loss_mi_critic"} if variant == "mi_critic" else set()
        assert set(_loss_keys(loss)) == expected
        named = dict(loss_fn.named_parameters())
        for key in _loss_keys(loss):
            loss_fn.zero_grad()
            loss[key].backward(retain_graph=True)
            owner = owners[key]
            own = {n for n in named if n == owner or n.startswith(owner + ".")}
            assert own, key
            assert not any(_zero(named[n]) for n in own), f"{key}: a null gradient"
            assert all(_zero(p) for n, p in named.items() if n not in own), key
        loss_fn.zero_grad()

        sum(loss[k] for k in _loss_keys(loss)).backward()
        named_parameters = list(loss_fn.named_parameters())
        named_buffers = list(loss_fn.named_buffers())
        assert len({p for _, p in named_parameters}) == len(named_parameters)
        assert len({p for _, p in named_buffers}) == len(named_buffers)
        for name, p in named_parameters:
            if not name.startswith("target_"):
                assert p.grad is not None and p.grad.norm() > 0.0, name
            else:
                assert p.grad is None or p.grad.norm() == 0.0, name
        with _warns_no_updater():  # reading target parameters warns, too
            targets = loss_fn.target_qvalue_network_params
        assert not any(p.requires_grad for p in targets.values(True, True))

    @pytest.mark.parametrize(
        "flag_dtype", [torch.bool, torch.int64, torch.uint8, torch.float32]
    )
    def test_misa_input_unchanged(self, flag_dtype):
        """Every input entry keeps its values and dtype; only the priority is added."""
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa()
        td["next", "terminated"][::3] = True
        for key in (("next", "done"), ("next", "terminated")):
            td[key] = td[key].to(flag_dtype)
        before = td.clone()
        loss_fn = self._create_loss()
        SoftUpdate(loss_fn, eps=0.5)
        loss_fn(td)
        added = set(td.keys(True, True)) - set(before.keys(True, True))
        assert added == {loss_fn.tensor_keys.priority}
        for key, value in before.items(True, True):
            assert td[key].dtype == value.dtype, key
            assert torch.equal(td[key], value), key

    def test_misa_target_updater_warning(self):
        if not rl_warnings():
            pytest.skip("RL_WARNINGS is off")
        td = self._create_mock_data_misa()
        loss_fn = self._create_loss()
        with pytest.warns(UserWarning, match="No target network updater"):
            loss_fn(td.clone())
        SoftUpdate(loss_fn, eps=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss_fn(td.clone())

    @pytest.mark.parametrize("device", DEVICES)
    def test_misa_deactivate_vmap(self, device):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa(device=device)
        actor = self._create_mock_actor(device=device)
        qvalue = self._create_mock_qvalue(device=device)
        torch.manual_seed(0)
        loss_fn_vmap = MISALoss(actor, qvalue, lagrange_tau=1.0, **FEW_SAMPLES)
        torch.manual_seed(0)
        loss_fn_no_vmap = MISALoss(
            actor, qvalue, lagrange_tau=1.0, deactivate_vmap=True, **FEW_SAMPLES
        )
        assert_allclose_td(
            loss_fn_vmap.qvalue_network_params.data,
            loss_fn_no_vmap.qvalue_network_params.data,
        )
        SoftUpdate(loss_fn_vmap, eps=0.5)
        SoftUpdate(loss_fn_no_vmap, eps=0.5)
        torch.manual_seed(1)
        loss_vmap = loss_fn_vmap(td.clone())
        torch.manual_seed(1)
        loss_no_vmap = loss_fn_no_vmap(td.clone())
        assert_allclose_td(loss_vmap, loss_no_vmap)

    @pytest.mark.parametrize("device", DEVICES)
    def test_misa_state_dict(self, device):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa(device=device)
        loss_fn = self._create_loss(device=device, lagrange_tau=1.0)
        SoftUpdate(loss_fn, eps=0.5)
        with torch.no_grad():
            loss_fn.log_alpha.fill_(-0.3)
            loss_fn.log_alpha_prime.fill_(0.4)
            for p in loss_fn.target_qvalue_network_params.values(True, True):
                p.add_(1.0)
        sd = loss_fn.state_dict()
        torch.manual_seed(123)
        loss_fn2 = self._create_loss(device=device, lagrange_tau=1.0)
        SoftUpdate(loss_fn2, eps=0.5)
        loss_fn2.load_state_dict(sd)
        torch.manual_seed(1)
        out = loss_fn(td.clone())
        torch.manual_seed(1)
        out2 = loss_fn2(td.clone())
        assert_allclose_td(out, out2)

    @pytest.mark.parametrize("separate_losses", [False, True])
    def test_misa_separate_losses(self, separate_losses):
        torch.manual_seed(self.seed)
        actor, qvalue, common, td = self._create_mock_common_layer_setup()
        loss_fn = MISALoss(
            actor,
            qvalue,
            action_spec=Bounded(-1.0, 1.0, (4,)),
            separate_losses=separate_losses,
            **FEW_SAMPLES,
        )
        SoftUpdate(loss_fn, eps=0.5)
        loss = loss_fn(td)
        assert loss_fn.tensor_keys.priority in td.keys()
        params = loss_fn.qvalue_network_params
        trunk = [v for k, v in params.items(True, True) if k[:2] == ("module", "0")]
        head = [v for k, v in params.items(True, True) if k[:2] == ("module", "1")]
        assert len(trunk) == len(list(common.parameters())) and head
        for k in _loss_keys(loss):
            loss_fn.zero_grad()
            loss[k].backward(retain_graph=True)
            if k == "loss_actor":
                assert all(_zero(p) for p in params.values(True, True))
                assert not any(
                    _zero(p) for p in loss_fn.actor_network_params.values(True, True)
                )
            elif k == "loss_qvalue":
                assert all(
                    _zero(p) for p in loss_fn.actor_network_params.values(True, True)
                )
                assert not any(_zero(p) for p in head)
                if separate_losses:  # the shared trunk learns from the actor only
                    assert all(_zero(p) for p in trunk)
                else:
                    assert not any(_zero(p) for p in trunk)
            else:
                assert k == "loss_alpha"
                assert all(_zero(p) for p in params.values(True, True))

    @pytest.mark.parametrize("n", range(1, 4))
    @pytest.mark.parametrize("device", DEVICES)
    def test_misa_batcher(self, n, device):
        torch.manual_seed(self.seed)
        td = self._create_seq_mock_data_misa(device=device)
        loss_fn = self._create_loss(device=device)
        SoftUpdate(loss_fn, eps=0.5)
        ms = MultiStep(gamma=0.9, n_steps=n).to(device)
        ms_td = ms(td.clone())

        torch.manual_seed(0)
        with _check_td_steady(ms_td):
            loss_ms = loss_fn(ms_td)
        assert loss_fn.tensor_keys.priority in ms_td.keys()
        assert ms_td[loss_fn.tensor_keys.priority].shape == td.shape
        with torch.no_grad():
            torch.manual_seed(0)  # same policy and MCMC draws as for loss_ms
            loss = loss_fn(td)
        total = sum(loss[k] for k in _loss_keys(loss))
        total_ms = sum(loss_ms[k] for k in _loss_keys(loss_ms))
        if n == 1:
            assert_allclose_td(td, ms_td.select(*list(td.keys(True, True))))
            torch.testing.assert_close(total_ms.detach(), total)
        else:  # an n-step return bootstraps further: a different critic target
            assert not torch.isclose(loss_ms["loss_qvalue"], loss["loss_qvalue"])
        total_ms.backward()
        for name, p in loss_fn.named_parameters():
            if not name.startswith("target_"):
                assert p.grad is not None and p.grad.norm() > 0.0, name

    @pytest.mark.parametrize("n", [1, 3])
    def test_misa_multistep_target(self, n):
        """The critic target is MultiStep's ``R_n + gamma^steps (1 - terminated) V``."""
        torch.manual_seed(self.seed)
        td = self._create_seq_mock_data_misa()
        for key in (("next", "done"), ("next", "terminated")):
            td[key][1, 2] = True  # an episode ends inside the window
        loss_fn = self._create_loss()
        loss_fn.make_value_estimator(gamma=0.9)
        SoftUpdate(loss_fn, eps=0.5)
        # critics Q = 0 and targets Q' = 10 everywhere: td_error = y^2
        with torch.no_grad():
            for params, bias in (
                (loss_fn.qvalue_network_params, 0.0),
                (loss_fn.target_qvalue_network_params, 10.0),
            ):
                for key, p in params.items(True, True):
                    p.fill_(bias if key[-1] == "bias" else 0.0)
        ms_td = MultiStep(gamma=0.9, n_steps=n)(td.clone())
        loss_fn(ms_td)
        reward = ms_td["next", "reward"].squeeze(-1)
        steps = ms_td["steps_to_next_obs"].reshape(td.shape)
        not_terminated = (~ms_td["next", "terminated"]).squeeze(-1).float()
        y = reward + 0.9**steps * not_terminated * 10.0
        assert (steps > 1).any() if n > 1 else (steps == 1).all()
        torch.testing.assert_close(ms_td["td_error"], y**2)

    @pytest.mark.parametrize("mi_estimator", ["misa", "dv"])
    def test_misa_mask(self, mi_estimator):
        """Padded transitions (``("collector", "mask")`` False) take no part."""
        torch.manual_seed(self.seed)
        mask = torch.ones(4, 5, dtype=torch.bool)
        mask[0, 3:] = mask[2, 1:] = False
        td = self._create_seq_mock_data_misa(mask=mask)
        # no burn-in: the sampler's step size is not adapted on the batch, so
        # the chains of the valid states do not depend on the padded ones
        kwargs = {"mi_estimator": mi_estimator, "num_mcmc_samples": 4, "num_burnin": 0}
        loss_fn = self._create_loss(**kwargs)
        loss_none = self._create_loss(
            **kwargs, reduction="none", scalar_output_mode="exclude"
        )
        loss_none.load_state_dict(loss_fn.state_dict())
        for loss in (loss_fn, loss_none):
            SoftUpdate(loss, eps=0.5)

        torch.manual_seed(1)
        out = loss_fn(td.clone())
        torch.manual_seed(1)
        per_item = loss_none(td.clone())
        for key in _loss_keys(out) + ["entropy", "mi_bound", "q_gap"]:
            assert (per_item[key][~mask] == 0).all(), key
            torch.testing.assert_close(
                out[key],
                per_item[key][mask].mean(),
                msg=lambda m, key=key: f"{key}: {m}",
            )

        padded = td.clone()
        for key in ("observation", ("next", "observation")):
            padded[key][~mask] = 5.0
        padded["action"][~mask] = 0.9
        padded["next", "reward"][~mask] = 100.0
        torch.manual_seed(1)
        out_padded = loss_fn(padded)
        assert_allclose_td(out, out_padded)

    @pytest.mark.parametrize("td_est", SUPPORTED)
    def test_misa_tensordict_keys(self, td_est):
        loss_fn = self._create_loss()
        default_keys = {
            "action": "action",
            "value": "state_value",
            "state_action_value": "state_action_value",
            "priority": "td_error",
            "reward": "reward",
            "done": "done",
            "terminated": "terminated",
            "priority_weight": "priority_weight",
        }
        test_fn = deepcopy(loss_fn)
        with pytest.raises(ValueError, match="not an accepted tensordict key"):
            test_fn.set_keys(unknown_key="test2")
        for key, value in default_keys.items():
            assert getattr(test_fn.tensor_keys, key) == value
        test_fn.set_keys(**dict.fromkeys(default_keys, "test1"))
        for key in default_keys:
            assert getattr(test_fn.tensor_keys, key) == "test1"

        # the value estimator's keys follow the loss's
        key_mapping = {
            "value": ("value", "state_value_test"),
            "reward": ("reward", "reward_test"),
            "done": ("done", ("done", "test")),
            "terminated": ("terminated", ("terminated", "test")),
        }
        test_fn = deepcopy(loss_fn)
        test_fn.set_keys(**{k: new for k, (_, new) in key_mapping.items()})
        test_fn.make_value_estimator(td_est)
        for _, (estimator_key, new_key) in key_mapping.items():
            assert (
                getattr(test_fn.value_estimator.tensor_keys, estimator_key) == new_key
            )
        # and set_keys after the estimator is built forwards them too
        loss_fn.make_value_estimator(td_est)
        loss_fn.set_keys(reward="reward2", done="done2")
        assert loss_fn.value_estimator.tensor_keys.reward == "reward2"
        assert loss_fn.value_estimator.tensor_keys.done == "done2"

    @pytest.mark.parametrize(
        "action_key, observation_key, reward_key, done_key, terminated_key",
        [
            ("action", "observation", "reward", "done", "terminated"),
            ("action2", "observation2", "reward2", "done2", "terminated2"),
            ("action", "observation2", "reward", "done2", "terminated"),
        ],
    )
    def test_misa_notensordict(
        self, action_key, observation_key, reward_key, done_key, terminated_key
    ):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa(
            action_key=action_key,
            observation_key=observation_key,
            reward_key=reward_key,
            done_key=done_key,
            terminated_key=terminated_key,
        )
        actor = self._create_mock_actor(
            observation_key=observation_key, action_key=action_key
        )
        qvalue = self._create_mock_qvalue(
            observation_key=observation_key, action_key=action_key
        )
        loss = MISALoss(actor, qvalue, **FEW_SAMPLES)
        loss.set_keys(
            action=action_key,
            reward=reward_key,
            done=done_key,
            terminated=terminated_key,
        )
        kwargs = {
            action_key: td.get(action_key),
            observation_key: td.get(observation_key),
            f"next_{reward_key}": td.get(("next", reward_key)),
            f"next_{done_key}": td.get(("next", done_key)),
            f"next_{terminated_key}": td.get(("next", terminated_key)),
            f"next_{observation_key}": td.get(("next", observation_key)),
        }
        td = TensorDict(kwargs, td.batch_size).unflatten_keys("_")

        torch.manual_seed(self.seed)
        with _warns_no_updater():
            loss_val = loss(**kwargs)
        SoftUpdate(loss, eps=0.5)
        torch.manual_seed(self.seed)
        loss_val_td = loss(td)
        assert len(loss_val) == len(loss.out_keys)
        for key, value in zip(loss.out_keys, loss_val):
            torch.testing.assert_close(loss_val_td.get(key), value)
        # SACLoss's order first, then MISA's diagnostics
        first = ["loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"]
        for position, key in enumerate(first + ["mi_bound", "q_gap"]):
            torch.testing.assert_close(loss_val_td.get(key), loss_val[position])

        loss.select_out_keys("loss_actor", "loss_alpha")
        torch.manual_seed(self.seed)
        loss_actor, loss_alpha = loss(**kwargs)
        assert loss_actor == loss_val_td["loss_actor"]
        assert loss_alpha == loss_val_td["loss_alpha"]

    def test_misa_nested_keys(self):
        """Nested observation, action, reward and flag keys."""
        torch.manual_seed(self.seed)
        flat = self._create_mock_data_misa()
        nested = TensorDict(
            {
                ("agent", "obs"): flat["observation"],
                ("agent", "act"): flat["action"],
                ("next", "agent", "obs"): flat["next", "observation"],
                ("next", "agent", "rew"): flat["next", "reward"],
                ("next", "agent", "done"): flat["next", "done"],
                ("next", "agent", "term"): flat["next", "terminated"],
            },
            flat.batch_size,
        )
        loss_flat = self._create_loss()
        actor = self._create_mock_actor(
            observation_key=("agent", "obs"), action_key=("agent", "act")
        )
        qvalue = self._create_mock_qvalue(
            observation_key=("agent", "obs"), action_key=("agent", "act")
        )
        loss_nested = MISALoss(actor, qvalue, **FEW_SAMPLES)
        loss_nested.set_keys(
            action=("agent", "act"),
            reward=("agent", "rew"),
            done=("agent", "done"),
            terminated=("agent", "term"),
            priority=("agent", "td_error"),
        )
        loss_nested.load_state_dict(loss_flat.state_dict())
        for loss in (loss_flat, loss_nested):
            SoftUpdate(loss, eps=0.5)
        torch.manual_seed(1)
        out_flat = loss_flat(flat)
        torch.manual_seed(1)
        out_nested = loss_nested(nested)
        assert_allclose_td(out_flat, out_nested)
        torch.testing.assert_close(nested["agent", "td_error"], flat["td_error"])
        # keyword call: nested keys joined by "_"
        torch.manual_seed(1)
        values = loss_nested(
            agent_obs=nested["agent", "obs"],
            agent_act=nested["agent", "act"],
            next_agent_obs=nested["next", "agent", "obs"],
            next_agent_rew=nested["next", "agent", "rew"],
            next_agent_done=nested["next", "agent", "done"],
            next_agent_term=nested["next", "agent", "term"],
        )
        for key, value in zip(loss_nested.out_keys, values):
            torch.testing.assert_close(out_nested[key], value)

    @pytest.mark.parametrize("reduction", [None, "none", "mean", "sum"])
    @pytest.mark.parametrize("device", DEVICES)
    def test_misa_reduction(self, reduction, device):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_misa(device=device)
        loss_fn = self._create_loss(
            device=device,
            lagrange_tau=1.0,
            reduction=reduction,
            scalar_output_mode="exclude" if reduction == "none" else None,
        )
        reference = self._create_loss(
            device=device,
            lagrange_tau=1.0,
            reduction="none",
            scalar_output_mode="exclude",
        )
        reference.load_state_dict(loss_fn.state_dict())
        for loss in (loss_fn, reference):
            SoftUpdate(loss, eps=0.5)
        torch.manual_seed(1)
        loss = loss_fn(td.clone())
        torch.manual_seed(1)
        per_item = reference(td.clone())
        assert per_item.batch_size == td.batch_size
        for key in _loss_keys(per_item):
            assert per_item[key].shape == td.shape
            if reduction == "none":
                assert loss[key].shape == td.shape
                torch.testing.assert_close(loss[key], per_item[key])
            else:
                assert loss[key].shape == torch.Size([])
                expected = per_item[key].sum() if reduction == "sum" else None
                expected = per_item[key].mean() if expected is None else expected
                torch.testing.assert_close(loss[key], expected)
        if reduction != "none":
            assert loss.batch_size == torch.Size([])
            assert "alpha" in loss.keys() and "alpha_prime" in loss.keys()
        else:
            assert "alpha" not in loss.keys()

    def _weighted_losses(self, sample):
        """The weighted loss, its per-transition terms and the unweighted loss."""
        loss_fn = self._create_loss(lagrange_tau=1.0)
        with torch.no_grad():
            loss_fn.log_alpha.fill_(-0.5)  # a non-zero alpha loss
        per_item = self._create_loss(
            lagrange_tau=1.0, reduction="none", scalar_output_mode="exclude"
        )
        unweighted = self._create_loss(lagrange_tau=1.0, use_prioritized_weights=False)
        outs = {}
        for name, loss in (("w", loss_fn), ("none", per_item), ("off", unweighted)):
            loss.load_state_dict(loss_fn.state_dict())
            SoftUpdate(loss, eps=0.5)
            torch.manual_seed(1)  # the same policy and MCMC draws for the three
            outs[name] = loss(sample.clone())
        return outs

    def test_misa_prioritized_weights(self):
        """Importance weights turn each loss's mean into a weighted mean."""
        torch.manual_seed(self.seed)
        sample = self._create_mock_data_misa()
        weights = torch.rand(sample.shape) * 2
        sample["priority_weight"] = weights
        outs = self._weighted_losses(sample)
        assert set(_loss_keys(outs["w"])) == {
            "loss_actor",
            "loss_qvalue",
            "loss_alpha",
            "loss_alpha_prime",
        }
        for key in _loss_keys(outs["w"]):
            terms = outs["none"][key] / weights  # "none" returns weighted terms
            torch.testing.assert_close(
                outs["w"][key], (terms * weights).sum() / weights.sum()
            )
            torch.testing.assert_close(outs["off"][key], terms.mean())
            assert not torch.isclose(outs["w"][key], outs["off"][key])

    def test_misa_prioritized_replay_buffer(self):
        """The loss's priorities feed TorchRL's prioritised buffer, whose weights it reads."""
        if SumSegmentTreeFp32 is None:
            pytest.skip("TorchRL's segment trees (its C++ extension) are not built")
        torch.manual_seed(42)
        batch_size, buffer_size = 16, 64
        rb = TensorDictPrioritizedReplayBuffer(
            alpha=0.7,
            beta=0.9,
            storage=LazyTensorStorage(buffer_size),
            batch_size=batch_size,
            priority_key="td_error",
        )
        rb.extend(self._create_mock_data_misa(batch=buffer_size))
        sample = rb.sample()
        loss_fn = self._create_loss()
        SoftUpdate(loss_fn, eps=0.5)
        loss_fn(sample)
        assert sample["td_error"].shape == (batch_size,)
        rb.update_tensordict_priority(sample)
        sample = rb.sample()
        weights = sample["priority_weight"]
        assert weights.std() > 1e-5
        outs = self._weighted_losses(sample)
        terms = outs["none"]["loss_qvalue"] / weights
        torch.testing.assert_close(
            outs["w"]["loss_qvalue"], (terms * weights).sum() / weights.sum()
        )

    def test_misa_no_host_sync(self):
        """The default call never reads a device value on the host.

        Every way of reading a tensor's value on the host is counted when
        called from the loss's or the sampler's code (TorchRL's own
        TanhNormal compares its bounds on the host when built, elsewhere). With
        ``validate_inputs=True`` the value checks do read values: the count
        is then positive, which shows the probe works.
        """
        folders = tuple(
            str(Path(f).parent) for f in (inspect.getfile(MISALoss), mcmc.__file__)
        )
        names = ["item", "tolist", "__bool__", "__int__", "__float__", "numpy"]
        names += ["nonzero", "__index__"]
        calls = []

        def counting(name, method):
            def wrapper(self, *args, **kwargs):
                if sys._getframe(1).f_code.co_filename.startswith(folders):
                    calls.append(name)
                return method(self, *args, **kwargs)

            return wrapper

        td = self._create_mock_data_misa()
        counts = {}
        for validate in (False, True):
            loss_fn = self._create_loss(
                lagrange_tau=1.0, mi_estimator="f", validate_inputs=validate
            )
            SoftUpdate(loss_fn, eps=0.5)
            calls.clear()
            with pytest.MonkeyPatch.context() as patch:
                for name in names:
                    patch.setattr(
                        torch.Tensor, name, counting(name, getattr(torch.Tensor, name))
                    )
                loss = loss_fn(td.clone())
                sum(loss[k] for k in _loss_keys(loss)).backward()
            counts[validate] = list(calls)
        assert counts[False] == []
        assert counts[True]
