"""AgentGroup: N agents in one vmapped update equal N separate runs.

Each agent of a group is compared with a plain, separately built loss module
of the same seed (TorchRL's own classes, not the group's vmap-ready copies),
trained by its own optimisers and :class:`~torchrl.objectives.SoftUpdate` on
the same batches. With ``randomness="same"`` both draw the same random numbers
from the same generator state, so the parameters must agree to float
round-off after several updates.
"""

from __future__ import annotations

import functools
import traceback

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from torchrl.data import Bounded
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
from torchrl.modules import TanhDelta, TanhNormal, ValueOperator
from torchrl.objectives import CQLLoss, IQLLoss, SoftUpdate, TD3BCLoss

from torchrl_misa import MISALoss
from torchrl_misa.agents import AgentGroup
from torchrl_misa.mcmc import sampler as mcmc_sampler

N_OBS, N_ACT, HIDDEN, BATCH, K_MCMC = 3, 2, 8, 6, 4
TAU = 0.05


def make_actor():
    spec = Bounded(-1.0, 1.0, (N_ACT,))
    return ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(N_OBS, 2 * N_ACT, num_cells=[HIDDEN, HIDDEN]),
                NormalParamExtractor(),
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        # tensors, as TorchRL's recipes pass them: TanhNormal would otherwise
        # build them from Python floats on every call
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )


def make_critic():
    return ValueOperator(
        MLP(N_OBS + N_ACT, 1, num_cells=[HIDDEN, HIDDEN], activation_class=nn.ELU),
        in_keys=["observation", "action"],
    )


def make_cql(**kwargs):
    loss = CQLLoss(make_actor(), make_critic(), loss_function="l2", **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def make_misa(**kwargs):
    kwargs = {"num_mcmc_samples": K_MCMC, "num_burnin": 2, **kwargs}
    loss = MISALoss(make_actor(), make_critic(), validate_inputs=False, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def make_td3bc(**kwargs):
    spec = Bounded(-1.0, 1.0, (N_ACT,))
    actor = ProbabilisticActor(
        TensorDictModule(
            MLP(N_OBS, N_ACT, num_cells=[HIDDEN, HIDDEN]),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        in_keys=["param"],
        spec=spec,
        distribution_class=TanhDelta,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    loss = TD3BCLoss(actor, make_critic(), bounds=(-1.0, 1.0), **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def make_iql(**kwargs):
    value = ValueOperator(
        MLP(N_OBS, 1, num_cells=[HIDDEN, HIDDEN]), in_keys=["observation"]
    )
    kwargs = {"expectile": 0.7, "temperature": 3.0, **kwargs}
    loss = IQLLoss(make_actor(), make_critic(), value, loss_function="l2", **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


# loss entries summed into the backward pass, and the optimiser groups' rates
LOSS_KEYS = {
    CQLLoss: ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"),
    MISALoss: ("loss_actor", "loss_qvalue", "loss_alpha"),
    TD3BCLoss: ("loss_actor", "loss_qvalue"),
    IQLLoss: ("loss_actor", "loss_qvalue", "loss_value"),
}
LR = {
    "actor_network_params": 3e-3,
    "qvalue_network_params": 3e-3,
    "value_network_params": 3e-3,
    "log_alpha": 1e-2,
}


def make_batch(seed: int, shape) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    done = torch.rand(*shape, 1, generator=g) < 0.2
    return TensorDict(
        {
            "observation": torch.randn(*shape, N_OBS, generator=g),
            "action": (torch.rand(*shape, N_ACT, generator=g) * 2 - 1) * 0.99,
            ("next", "observation"): torch.randn(*shape, N_OBS, generator=g),
            ("next", "reward"): torch.randn(*shape, 1, generator=g),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
        },
        list(shape),
    )


def trainable(loss, name: str) -> list[nn.Parameter]:
    """A plain loss module's trainable parameters under ``name``."""
    entry = getattr(loss, name)
    if isinstance(entry, nn.Parameter):
        return [entry]
    return [p for p in entry.values(True, True) if p.requires_grad]


def optimisers(params_of, names) -> list[torch.optim.Optimizer]:
    """One Adam per parameter group, as the training script builds them."""
    return [torch.optim.Adam(params_of(name), lr=LR[name]) for name in names]


def groups_of(loss_type) -> list[str]:
    names = ["actor_network_params", "qvalue_network_params"]
    if loss_type is IQLLoss:
        return names + ["value_network_params"]
    return names + (["log_alpha"] if loss_type is not TD3BCLoss else [])


def single_run(make_loss, seed: int, batches, rng_seed: int, **kwargs):
    """A separately built agent trained alone: plain loss, Adam, SoftUpdate."""
    torch.manual_seed(seed)
    loss = make_loss(**kwargs)
    optims = optimisers(lambda n: trainable(loss, n), groups_of(type(loss)))
    updater = SoftUpdate(loss, tau=TAU)
    torch.manual_seed(rng_seed)
    outs = []
    for batch in batches:
        out = loss(batch.clone())
        sum(out[k] for k in LOSS_KEYS[type(loss)]).backward()
        for opt in optims:
            opt.step()
            opt.zero_grad()
        updater.step()
        outs.append(out.detach())
    return loss, outs


def group_run(group: AgentGroup, batches, rng_seed: int):
    optims = optimisers(group.parameters_of, groups_of(group.loss_type))
    torch.manual_seed(rng_seed)
    outs = []
    for batch in batches:
        out = group(batch.clone())
        sum(out[k] for k in LOSS_KEYS[group.loss_type]).sum().backward()
        for opt in optims:
            opt.step()
            opt.zero_grad()
        group.update_targets(TAU)
        outs.append(out.detach())
    return outs


def assert_agent_equals(group, i, loss, outs_group, outs_single):
    """Every parameter and buffer, and every logged output, of agent i."""
    single = TensorDict.from_module(loss)
    agent = group.params.data[i]
    assert set(single.keys(True, True)) == set(agent.keys(True, True))
    for key, value in single.items(True, True):
        torch.testing.assert_close(
            agent.get(key),
            value.data,
            rtol=1e-5,
            atol=1e-6,
            msg=lambda m: f"{key}: {m}",
        )
    for out_g, out_s in zip(outs_group, outs_single):
        for key, value in out_s.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(
                    out_g[key][i],
                    value,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m: f"{key}: {m}",
                )


MAKERS = {"cql": make_cql, "iql": make_iql, "misa": make_misa, "td3bc": make_td3bc}
NUM_AGENTS, NUM_UPDATES, SEED, RNG_SEED = 3, 3, 10, 1234


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_agents_equal_single_runs(name):
    """Agent i after K updates = a separate run of seed SEED + i on agent i's batches."""
    make = MAKERS[name]
    batches = [make_batch(100 + t, (NUM_AGENTS, BATCH)) for t in range(NUM_UPDATES)]
    group = AgentGroup.from_factory(make, NUM_AGENTS, seed=SEED, randomness="same")
    outs_group = group_run(group, batches, RNG_SEED)
    for i in range(NUM_AGENTS):
        loss, outs_single = single_run(
            make, SEED + i, [b[i] for b in batches], RNG_SEED
        )
        assert_agent_equals(group, i, loss, outs_group, outs_single)


def test_compiled_group_forward_compiles_once():
    """A call leaves the group as it found it: the next call passes the guards
    of the first one's compile (a recompile here costs a full compile per run)."""
    group = AgentGroup.from_factory(make_misa, 2, seed=SEED, randomness="different")
    forward = torch.compile(group, backend="eager")  # dynamo's guards, no codegen
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(3):
            forward(make_batch(t, (2, BATCH)))


_SAMPLER_DRAWS = mcmc_sampler._draws


def make_steep_misa(**kwargs):
    """MISA whose critics are steep in the action (last layer scaled by 30),
    with 6 burn-in transitions (5 adapting): the agents' acceptance rates, and
    so their step sizes, part."""
    critic = make_critic()
    with torch.no_grad():
        critic.module[-1].weight.mul_(30.0)
    kwargs = {"num_mcmc_samples": K_MCMC, "num_burnin": 6, **kwargs}
    loss = MISALoss(make_actor(), critic, validate_inputs=False, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def _agent_draws(monkeypatch, seeds, agent=None):
    """The HMC sampler draws from one generator per agent, not the global one.

    In a group (``agent=None``) agent ``i``'s slice of every draw comes from
    the generator seeded ``seeds[i]``; in a single run of agent ``i`` from the
    same generator. The global generator then feeds the losses' own draws
    only, in the same order in both.
    """
    draws = _SAMPLER_DRAWS
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def per_agent(position, generator):
        if agent is not None:
            return draws(position, gens[agent])
        # [*chains, N, B, d]: the agent dimension is third from the end
        dim = position.ndim - 3
        parts = [draws(position.select(dim, i), g) for i, g in enumerate(gens)]
        return tuple(torch.stack(p, dim) for p in zip(*parts))

    monkeypatch.setattr(mcmc_sampler, "_draws", per_agent)


@pytest.mark.parametrize(
    "options, steps_part",
    [
        ({}, True),
        ({"num_chains": 2}, True),
        # every agent's step size moves the same way at these settings
        ({"sampler_mode": "authors"}, False),
        ({"step_size": 0.3}, False),
    ],
    ids=["whitened", "two-chains", "authors", "step-0.3"],
)
def test_batched_sampler_agents_equal_single_runs(monkeypatch, options, steps_part):
    """MISA's samples drawn for all agents at once, outside the vmap: agent i
    after K updates = a separate run of seed SEED + i, its sampler fed the
    same draws (its own step-size adaptation included)."""
    make = functools.partial(make_steep_misa, **options)
    batches = [make_batch(300 + t, (NUM_AGENTS, BATCH)) for t in range(NUM_UPDATES)]
    group = AgentGroup.from_factory(
        make, NUM_AGENTS, seed=SEED, randomness="same", batched_sampler=True
    )
    assert group.batched_sampler
    seeds = [50 + i for i in range(NUM_AGENTS)]
    _agent_draws(monkeypatch, seeds)
    outs_group = group_run(group, batches, RNG_SEED)
    for i in range(NUM_AGENTS):
        _agent_draws(monkeypatch, seeds, agent=i)
        loss, outs_single = single_run(
            make, SEED + i, [b[i] for b in batches], RNG_SEED
        )
        assert_agent_equals(group, i, loss, outs_group, outs_single)
    # the agents' step sizes adapted apart (one shared size would be equal)
    if steps_part:
        steps = outs_group[-1]["hmc_step_size"]
        assert (steps - steps[0]).abs().max() > 1e-6


def test_batched_sampler_is_chosen_where_it_applies():
    """On by default for MISA with its own draws; off, or refused, elsewhere."""
    assert AgentGroup.from_factory(make_misa, 2).batched_sampler
    assert not AgentGroup.from_factory(make_misa, 2, randomness="same").batched_sampler
    assert not AgentGroup.from_factory(
        lambda: make_misa(unbiased_correction=False), 2
    ).batched_sampler
    assert not AgentGroup.from_factory(make_cql, 2).batched_sampler
    sweep = [make_misa(target_accept=0.6), make_misa(target_accept=0.8)]
    assert not AgentGroup(sweep).batched_sampler
    with pytest.raises(ValueError, match="target_accept.*differ"):
        AgentGroup([make_misa(target_accept=0.6), make_misa()], batched_sampler=True)
    with pytest.raises(ValueError, match="no HMC sampler"):
        AgentGroup.from_factory(make_cql, 2, batched_sampler=True)


def test_a_loss_given_a_sampler_keeps_it():
    """MISA losses built with a ``sampler``: the group leaves the batched
    sampler off and every agent's loss calls that sampler inside the vmap."""
    calls = []

    def sampler(log_weight_fn, loc, scale, init_action, **options):
        calls.append(options["num_samples"])
        ones = torch.ones_like(loc[..., 0])
        info = {"acceptance_rate": ones, "step_size": ones, "num_divergent": 0 * ones}
        return torch.tanh(loc).expand(options["num_samples"], *loc.shape), info

    def make():
        return make_misa(sampler=sampler)

    group = AgentGroup.from_factory(make, NUM_AGENTS)
    assert not group.batched_sampler
    with pytest.raises(ValueError, match="its own sampler"):
        AgentGroup.from_factory(make, NUM_AGENTS, batched_sampler=True)
    out = group(make_batch(0, (NUM_AGENTS, BATCH)))
    assert calls == [K_MCMC]  # one call, vmapped over the agents
    assert torch.equal(out["hmc_acceptance_rate"], torch.ones(NUM_AGENTS))
    assert torch.isfinite(out["loss_actor"]).all()


@pytest.mark.parametrize("name", ["cql", "iql", "misa"])
def test_no_gradient_leaks_between_agents(name):
    """d loss_i / d params_j is exactly zero for j != i, and not zero for j = i."""
    group = AgentGroup.from_factory(MAKERS[name], NUM_AGENTS, seed=SEED)
    out = group(make_batch(7, (NUM_AGENTS, BATCH)))
    params = group.parameters_of(*groups_of(group.loss_type))
    for key in LOSS_KEYS[group.loss_type]:
        for i in range(NUM_AGENTS):
            grads = torch.autograd.grad(
                out[key][i], params, retain_graph=True, allow_unused=True
            )
            moved = False
            for p, g in zip(params, grads):
                if g is None:
                    continue
                others = torch.cat([g[:i].flatten(), g[i + 1 :].flatten()])
                assert torch.count_nonzero(others) == 0, (key, i, p.shape)
                moved = moved or bool(g[i].abs().sum() > 0)
            assert moved, f"{key} of agent {i} moves none of its own parameters"


def test_agents_draw_their_own_random_numbers():
    """Identical agents on identical batches: equal with shared draws, not with their own."""
    torch.manual_seed(0)
    twins = [make_cql() for _ in range(2)]
    twins[1].load_state_dict(twins[0].state_dict())
    batch = make_batch(3, (1, BATCH)).expand(2, BATCH).clone()
    outs = {}
    for randomness in ("same", "different"):
        group = AgentGroup(twins, randomness=randomness)
        torch.manual_seed(1)
        outs[randomness] = group(batch.clone())["loss_actor"].detach()
    # equal up to round-off (batched matmuls may sum in another order)
    torch.testing.assert_close(outs["same"][0], outs["same"][1])
    assert (outs["different"][0] - outs["different"][1]).abs() > 1e-3


SWEEPS = {
    "cql": {"min_q_weight": [0.5, 5.0]},
    "iql": {"expectile": [0.6, 0.9], "temperature": [1.0, 3.0]},
    "misa": {"min_q_weight": [1.0, 5.0], "bc_weight": [0.5, 2.0]},
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_per_agent_options_match_single_runs(name):
    """A sweep of plain-number options: each agent trains as a run with its own values."""
    make, sweep = MAKERS[name], SWEEPS[name]
    options = [{k: v[i] for k, v in sweep.items()} for i in range(2)]
    losses = []
    for kwargs in options:
        torch.manual_seed(SEED)
        losses.append(make(**kwargs))
    group = AgentGroup(losses, randomness="same")
    assert sorted(group.per_agent_options) == sorted(sweep)
    for key, values in sweep.items():
        torch.testing.assert_close(group.per_agent_options[key], torch.tensor(values))
    batches = [make_batch(200 + t, (2, BATCH)) for t in range(NUM_UPDATES)]
    outs_group = group_run(group, batches, RNG_SEED)
    for i, kwargs in enumerate(options):
        loss, outs_single = single_run(
            make, SEED, [b[i] for b in batches], RNG_SEED, **kwargs
        )
        assert_agent_equals(group, i, loss, outs_group, outs_single)
    # the options made a difference: same seed, same draws, different losses
    first = outs_group[0]
    assert (first["loss_qvalue"][0] - first["loss_qvalue"][1]).abs() > 1e-4


def test_copy_agent_to_writes_that_agents_parameters():
    group = AgentGroup.from_factory(make_cql, NUM_AGENTS, seed=SEED)
    torch.manual_seed(SEED + 1)
    expected = TensorDict.from_module(make_cql()).data
    target = make_cql()
    group.copy_agent_to(1, target)
    assert (TensorDict.from_module(target).data == expected).all()
    with pytest.raises(IndexError, match="out of range"):
        group.copy_agent_to(NUM_AGENTS, target)


def test_update_targets_is_polyak_averaging():
    """Targets move by tau toward the sources, every agent alike (formula written out)."""
    group = AgentGroup.from_factory(make_cql, 2, seed=SEED)
    source = group.params.get("qvalue_network_params").data
    target = group.params.get("target_qvalue_network_params").data
    with torch.no_grad():
        source.apply_(lambda x: x.add_(torch.randn_like(x)))
    expected = target.apply(lambda t, s: (1 - TAU) * t + TAU * s, source)
    group.update_targets(TAU)
    for key, value in expected.items(True, True):
        torch.testing.assert_close(target.get(key), value)


def test_bad_inputs_have_clear_errors():
    group = AgentGroup.from_factory(make_cql, 2, seed=SEED)
    with pytest.raises(ValueError, match=r"num_agents=2, batch"):
        group(make_batch(0, (3, BATCH)))
    with pytest.raises(ValueError, match=r"num_agents=2, batch"):
        group(make_batch(0, (2 * BATCH,)))
    with pytest.raises(ValueError, match="only real-valued"):
        AgentGroup([make_cql(num_random=3), make_cql(num_random=4)])
    with pytest.raises(ValueError, match="same type"):
        AgentGroup([make_cql(), make_td3bc()])
    with pytest.raises(ValueError, match="passed twice"):
        loss = make_cql()
        AgentGroup([loss, loss])
    with pytest.raises(ValueError, match="min_alpha"):
        AgentGroup([make_cql(min_alpha=0.1), make_cql(min_alpha=0.1)])
    with pytest.raises(ValueError, match="only IQLLoss itself"):

        class SubclassedIQL(IQLLoss):
            pass

        losses = [make_iql(), make_iql()]
        for loss in losses:
            loss.__class__ = SubclassedIQL
        AgentGroup(losses)
    with pytest.raises(ValueError, match="randomness"):
        AgentGroup([make_cql()], randomness="shared")
    with pytest.raises(KeyError, match="no entry"):
        group.parameters_of("critic_params")


def test_hmc_gradients_under_vmap_equal_eager_autograd():
    """The sampler's value_and_grad inside vmap = autograd on each slice alone."""
    from torchrl_misa.mcmc import value_and_grad

    weights = torch.randn(3, 4)

    def log_prob(w, x):
        return -((x - w) ** 2).sum(-1) + torch.tanh(x).sum(-1)

    position = torch.randn(3, 5, 4)
    vmapped = torch.vmap(lambda w, x: value_and_grad(lambda y: log_prob(w, y), x))
    value, grad = vmapped(weights, position)
    for i in range(3):
        v_i, g_i = value_and_grad(lambda y: log_prob(weights[i], y), position[i])
        torch.testing.assert_close(value[i], v_i)
        torch.testing.assert_close(grad[i], g_i)
        # the gradient written out: -2 (x - w) + 1 - tanh(x)^2
        x = position[i]
        torch.testing.assert_close(g_i, -2 * (x - weights[i]) + 1 - torch.tanh(x) ** 2)


class _OpSites(TorchDispatchMode):
    """Records the call stack of every call to one of ``OPS``."""

    OPS = ()

    def __init__(self):
        super().__init__()
        self.sites = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            stack = traceback.extract_stack()
            self.sites.append([f"{f.filename}:{f.lineno}" for f in stack])
        return func(*args, **(kwargs or {}))


class _HostReads(_OpSites):
    """Where a tensor's value is read back to the host (.item(), bool())."""

    OPS = (
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.item.default,
        torch.ops.aten.is_nonzero.default,
    )


class _HostData(_OpSites):
    """Where a tensor is made from Python data (``torch.tensor(0.5)``,
    ``torch.as_tensor(x)``): on a GPU, a copy from the host, which CUDA-graph
    capture refuses."""

    OPS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


@pytest.mark.parametrize("name", ["cql", "iql", "misa", "td3bc"])
def test_no_tensors_made_from_host_data_in_the_update(name):
    """Every tensor an update needs is built on the device (factories,
    ``new_full``) or kept as a buffer, so the update can be captured in a CUDA
    graph."""
    group = AgentGroup.from_factory(MAKERS[name], 2, seed=SEED)
    group(make_batch(1, (2, BATCH)))  # lazy set-up happens on the first call
    batch = make_batch(0, (2, BATCH))
    with _HostData() as made:
        out = group(batch)
        sum(out[k] for k in LOSS_KEYS[group.loss_type]).sum().backward()
        group.update_targets(TAU)
    assert not made.sites, "tensors made from host data at:\n" + "\n".join(
        " <- ".join(reversed(s[-6:-1])) for s in made.sites
    )


@pytest.mark.parametrize("name", ["cql", "iql", "misa"])
def test_no_host_reads_in_the_update(name):
    """Losses, gradients and target updates read no tensor value back to the host,
    except TorchRL's TanhNormal constructor (``(high != 1).any()``, skipped
    under torch.compile)."""
    group = AgentGroup.from_factory(MAKERS[name], 2, seed=SEED)
    batch = make_batch(0, (2, BATCH))
    # (Adam reads its CPU step counter; capturable=True avoids it on CUDA)
    with _HostReads() as reads:
        out = group(batch)
        sum(out[k] for k in LOSS_KEYS[group.loss_type]).sum().backward()
        group.update_targets(TAU)
    tanh_normal = "torchrl/modules/distributions/continuous.py"
    others = [s for s in reads.sites if not any(tanh_normal in f for f in s)]
    assert not others, "host reads at:\n" + "\n".join(s[-4] for s in others)


@pytest.mark.parametrize("name", ["iql", "misa"])
def test_set_option_trains_as_single_runs_built_with_that_value(name):
    """Options set on a group after it is built (swept or not) act as constructor values."""
    make, sweep = MAKERS[name], SWEEPS[name]
    losses = []
    for i in range(2):
        torch.manual_seed(SEED)
        losses.append(make(**{k: v[i] for k, v in sweep.items()}))
    group = AgentGroup(losses, randomness="same")
    new = {key: 0.5 * sum(values) + 0.25 for key, values in sweep.items()}
    for key, value in new.items():
        group.set_option(key, value)
        assert group.get_option(key) == value
    batches = [make_batch(300 + t, (2, BATCH)) for t in range(NUM_UPDATES)]
    outs_group = group_run(group, batches, RNG_SEED)
    for i in range(2):
        loss, outs_single = single_run(
            make, SEED, [b[i] for b in batches], RNG_SEED, **new
        )
        assert_agent_equals(group, i, loss, outs_group, outs_single)
    with pytest.raises(AttributeError, match="not a real-valued option"):
        group.set_option("no_such_option", 1.0)
    with pytest.raises(TypeError, match="real number"):
        group.set_option(next(iter(new)), "1.0")
