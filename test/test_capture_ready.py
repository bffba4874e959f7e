"""Capture-readiness of the recipe's update, checked on the ``meta`` device.

A CUDA graph replays kernels; it cannot hold a read of a value back to the
host (``.item()``, ``bool(t)``, an op whose output size depends on values), a
copy from host memory, or a tensor that lives on the CPU (its value would be
frozen at capture). The recipe's whole update (MISA's losses with the HMC
chain, backward, Adam with ``capturable=True``, target update) runs here on
the ``meta`` device, where every tensor has a shape and no data, under a
dispatch mode that records each of those. A CPU-only build of torch can run
this, so CI notices the day the update stops being capturable.

TorchRL itself blocks building on ``meta`` in two places, worked around here
(neither is part of a captured update):

- ``LossModule``'s critic-ensemble initialisation calls ``.item()`` on the
  parameters' min and max (``torchrl/objectives/common.py``,
  ``_compare_and_expand``); upstream, the uniform re-initialisation could be
  drawn on the device, ``torch.rand_like(p) * (hi - lo) + lo``.
- ``SoftUpdate.init_`` (run at its first ``step``) asks ``target.is_set_to(source)``,
  an op with no meta kernel (``torchrl/objectives/utils.py``); upstream, comparing
  ``untyped_storage().data_ptr()`` and the view's offset answers the same without
  touching the data. Here every meta target counts as distinct from its source.
"""

from __future__ import annotations

import importlib
import traceback

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
META = torch.device("meta")
OBS, ACT, BATCH = 3, 2, 8

# Ops that read a tensor's value on the host.
HOST_READS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
}
# Tensors made from Python numbers or lists (torch.tensor(0.5), as_tensor(x)).
FROM_HOST_DATA = {aten.lift_fresh.default, aten.lift_fresh_copy.default}


class _HostDataCalls(TorchFunctionMode):
    """Calls that make a tensor from Python numbers, lists or arrays."""

    FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray)

    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        data = None
        if func in self.FACTORIES:
            data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
        elif func is torch.Tensor.new_tensor:
            data = args[1] if len(args) > 1 else kwargs.get("data")
        else:
            return func(*args, **kwargs)
        if not isinstance(data, torch.Tensor):
            self.record("tensor from host data", func)
        return func(*args, **kwargs)


class HostSync(Exception):
    """A host read: on ``meta`` the update cannot go on past it."""


class CaptureProbe(TorchDispatchMode):
    """Records, with the calling line, every op a CUDA graph could not capture.

    Entering it also enters :class:`_HostDataCalls`: ``torch.as_tensor(0.5,
    device=d)`` copies from the host below the dispatcher's Python key, where
    this mode cannot see it.
    """

    def __init__(self):
        super().__init__()
        self.faults = []
        self._calls = _HostDataCalls(self._record)

    def __enter__(self):
        self._calls.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._calls.__exit__(*exc)

    def _record(self, kind: str, func) -> None:
        stack = [
            f"{f.filename}:{f.lineno} {f.name}"
            for f in traceback.extract_stack()[:-2]
            if "torch/utils/_python_dispatch" not in f.filename
            and "torch/overrides" not in f.filename
        ]
        self.faults.append((kind, str(func), stack[-8:]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            self._record("host read", func)
            raise HostSync(str(func))
        if func in FROM_HOST_DATA:
            self._record("tensor from host data", func)
        else:
            leaves = tree_leaves((args, kwargs))
            on_cpu = [
                t
                for t in leaves
                if isinstance(t, torch.Tensor) and t.device.type == "cpu"
            ]
            if on_cpu:
                to_device = func in (aten._to_copy.default, aten.copy_.default)
                self._record("host-to-device copy" if to_device else "CPU tensor", func)
        return func(*args, **kwargs)

    def report(self) -> str:
        lines = []
        for kind, func, stack in self.faults:
            lines.append(f"{kind}: {func}")
            lines += [f"    {frame}" for frame in reversed(stack)]
        return "\n".join(lines)


def _meta_batch(batch_shape, device=META) -> TensorDict:
    def z(*shape, dtype=torch.float32):
        return torch.zeros(*batch_shape, *shape, dtype=dtype, device=device)

    return TensorDict(
        {
            "observation": z(OBS),
            "action": z(ACT),
            "next": {
                "observation": z(OBS),
                "reward": z(1),
                "done": z(1, dtype=torch.bool),
                "terminated": z(1, dtype=torch.bool),
                "truncated": z(1, dtype=torch.bool),
            },
        },
        batch_shape,
        device=device,
    )


class _Data:
    """What ``make_misa_update`` reads of the data: two stored transitions
    (on the CPU, where the networks are built before they move)."""

    def __init__(self):
        self.replay_buffer = _meta_batch([2], device="cpu")


def _meta_recipe(misa_script, monkeypatch, overrides: list[str]):
    """The recipe's own update (``make_misa_update``), built on ``meta``."""
    folder = misa_script.misa_offline.__file__.rsplit("/", 1)[0]
    with initialize_config_dir(config_dir=folder, version_base="1.2"):
        cfg = compose(
            "config",
            overrides=[
                "preset=demo",
                "network.actor_hidden_sizes=[8,8]",
                "network.critic_hidden_sizes=[8,8]",
                "loss.num_mcmc_samples=3",
                "loss.num_burnin=2",
                *overrides,
            ],
            return_hydra_config=False,
        )
    item, is_set_to = torch.Tensor.item, torch.Tensor.is_set_to
    with monkeypatch.context() as patch:
        # TorchRL's ensemble initialisation reads min/max with .item() (see above)
        patch.setattr(
            torch.Tensor, "item", lambda t: 0.0 if t.is_meta else item(t), raising=True
        )
        patch.setattr(
            torch.Tensor,
            "is_set_to",
            lambda t, other: False if t.is_meta else is_set_to(t, other),
        )
        recipe = misa_script.utils.make_misa_update(cfg, _Data(), ACT, META)
    # Adam keeps its step counters on the parameters' device with capturable=True,
    # as capture_update sets; meta is not on its list of such devices.
    monkeypatch.setattr(
        importlib.import_module("torch.optim.adam"),
        "_get_capturable_supported_devices",
        lambda supports_xla=True: ["cuda", "meta"],
    )
    for _, optimizer in recipe.optimizers.values():
        for group in optimizer.param_groups:
            group["capturable"] = True
    return cfg, recipe


def _run_update(misa_script, monkeypatch, recipe, batch_shape) -> CaptureProbe:
    """Two updates as if a CUDA stream were capturing them; the probe watches
    the second (the first creates Adam's state, as CudaGraphModule's eager
    warm-up does). Checks that skip themselves under capture are skipped:
    TorchRL's TanhNormal bounds check and MISALoss's input validation."""
    active = tuple(recipe.optimizers)
    probe = CaptureProbe()
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        misa_script.utils.update_step(recipe, _meta_batch(batch_shape), active)
        try:
            with probe:
                misa_script.utils.update_step(recipe, _meta_batch(batch_shape), active)
        except HostSync:
            pass
    return probe


@pytest.mark.parametrize(
    "overrides",
    [[], ["loss.mi_estimator=dv"], ["loss.mi_critic=true"], ["loss.lagrange_tau=1.0"]],
    ids=["misa", "dv", "misa-t", "lagrange"],
)
def test_update_is_capture_ready(misa_script, monkeypatch, overrides):
    """One agent: no host read, no host data, no CPU tensor in the whole update."""
    _, recipe = _meta_recipe(misa_script, monkeypatch, overrides)
    probe = _run_update(misa_script, monkeypatch, recipe, [BATCH])
    assert not probe.faults, "not capturable:\n" + probe.report()


def test_group_update_is_capture_ready(misa_script, monkeypatch):
    """Two agents as one group: the batched sampler and the vmapped losses."""
    _, recipe = _meta_recipe(misa_script, monkeypatch, ["num_agents=2"])
    probe = _run_update(misa_script, monkeypatch, recipe, [2, BATCH])
    assert not probe.faults, "not capturable:\n" + probe.report()


def test_probe_catches_each_kind_of_fault():
    """The probe itself: each fault a CUDA graph refuses is recorded by kind."""
    x = torch.zeros(4, device=META)
    with CaptureProbe() as probe:
        _ = x + torch.tensor(0.5)  # host data, then a CPU tensor in the add
        _ = torch.as_tensor(0.5, device=META)  # host data, copied below dispatch
        _ = x + torch.ones((), device="cpu")  # a CPU buffer
        _ = torch.ones(4).to(META)  # host-to-device copy
        with pytest.raises(HostSync):
            bool(x.sum() > 0)  # a host read
    kinds = [kind for kind, _, _ in probe.faults]
    # torch.tensor is seen twice: the call, and the dispatcher's lift_fresh
    assert kinds.count("tensor from host data") == 3
    assert "host-to-device copy" in kinds
    assert kinds.count("CPU tensor") >= 2
    assert kinds[-1] == "host read"
