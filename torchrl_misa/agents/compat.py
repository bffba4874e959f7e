"""What a loss module needs to run once per agent under :func:`torch.vmap`.

Inside ``torch.vmap`` every parameter is a batched tensor, which refuses three
things that TorchRL's losses and distributions do:

* reading ``.data`` (``RuntimeError: accessing `data` under vmap transform is
  not allowed``), used by :class:`~torchrl.objectives.CQLLoss` for its
  temperature and its next-action sampling, and by
  :class:`~torchrl.objectives.LossModule` when a loss reads a target network
  it does not keep (:class:`~torchrl.objectives.IQLLoss`' value target);
* in-place random draws into a fresh, unbatched tensor with
  ``randomness="different"`` (``Cannot ask for different inplace randomness on
  an unbatched tensor``): ``torch.distributions.Normal.rsample`` draws
  ``torch.empty(shape).normal_()``, so every reparameterised
  :class:`~torchrl.modules.TanhNormal` sample fails;
* Python control flow on a tensor's value (``if x.any():``).

:func:`make_vmap_compatible` fixes the first two in a private copy of the loss
(the agent group's template) without changing its results: the same
operations, the same random draws. What it cannot fix raises a clear error
when the group is built.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictModule
from torch import nn, Tensor
from torch.distributions.utils import _sum_rightmost

from torchrl.modules.distributions import TanhNormal
from torchrl.objectives import CQLLoss, IQLLoss, LossModule


class OutOfPlaceTanhNormal(TanhNormal):
    """:class:`~torchrl.modules.TanhNormal` whose reparameterised draws work under vmap.

    ``torch.distributions.Normal.rsample`` fills an unbatched tensor in place
    (``torch.empty(shape).normal_()``), which ``torch.vmap(...,
    randomness="different")`` refuses, and ``Normal.sample`` draws
    ``torch.normal(loc, scale)``, which ``randomness="same"`` refuses for a
    batched ``loc``. This subclass draws the same standard normal out of place
    (``torch.randn``: the same values from the same generator state) and maps
    it as they do (``loc + eps * scale``, then the tanh transform), so outside
    vmap it returns exactly what :class:`~torchrl.modules.TanhNormal` returns.

    Examples:
        >>> import torch
        >>> from torchrl.modules import TanhNormal
        >>> loc, scale = torch.zeros(3, 2), torch.ones(3, 2)
        >>> _ = torch.manual_seed(0)
        >>> a = TanhNormal(loc, scale).rsample()
        >>> _ = torch.manual_seed(0)
        >>> b = OutOfPlaceTanhNormal(loc, scale).rsample()
        >>> torch.equal(a, b)
        True
        >>> sample = lambda loc: OutOfPlaceTanhNormal(loc, torch.ones_like(loc)).rsample()
        >>> out = torch.vmap(sample, randomness="different")(torch.zeros(2, 5, 1))
        >>> bool((out[0] != out[1]).all())
        True
    """

    def _preimage(self, sample_shape) -> Tensor:
        root = self.root_dist
        shape = self.base_dist._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=root.loc.dtype, device=root.loc.device)
        return root.loc + eps * root.scale

    def rsample(self, sample_shape=()) -> Tensor:
        value = self._preimage(sample_shape)
        for transform in self.transforms:
            value = transform(value)
        return value

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        return self._and_log_prob(self._preimage(sample_shape))

    def sample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            preimage = self._preimage(sample_shape)
        return self._and_log_prob(preimage, detach_sample=True)

    def _and_log_prob(self, preimage: Tensor, detach_sample: bool = False):
        # TanhNormal's scoring of the pre-tanh value itself
        transform = self.transforms[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_sample):
            sample = transform(preimage)
        log_prob = self.base_dist.log_prob(preimage) - _sum_rightmost(
            transform.log_abs_det_jacobian(preimage, sample), len(self.event_shape)
        )
        return sample, log_prob


class _DataIsDetach:
    """A TensorDict whose ``.data`` is ``.detach()`` (the same values, no graph)."""

    def __init__(self, td: TensorDictBase) -> None:
        self._td = td

    @property
    def data(self) -> TensorDictBase:
        return self._td.detach()

    def __getattr__(self, name):
        return getattr(self._td, name)


class _DetachedUntrackedTargets:
    """Answers a target the loss does not keep with its source's ``.detach()``.

    For ``target_<name>_params`` that a loss does not hold,
    :class:`~torchrl.objectives.LossModule`'s ``__getattr__`` returns
    ``<name>_params.data`` (torchrl 0.14.1, ``objectives/common.py`` line
    621), which vmap refuses. ``.detach()`` gives the same values without a
    graph. Mixed in before the loss class.
    """

    def __getattr__(self, item):
        if (
            item.startswith("target_")
            and item.endswith("_params")
            and self._modules.get(item) is None
            and self._modules.get(item[7:]) is not None
        ):
            return self._modules[item[7:]].detach()
        return super().__getattr__(item)


class VmapCQLLoss(_DetachedUntrackedTargets, CQLLoss):
    """:class:`~torchrl.objectives.CQLLoss` with ``.data`` reads replaced by ``.detach()``.

    ``.data`` is refused under vmap (torchrl 0.14.1, ``objectives/cql.py``:
    ``_alpha`` line 989, ``_get_policy_actions`` line 663, ``_get_value_v``
    lines 681, 696 and 716; under ``torch.compile`` also ``_clear_weakrefs``
    naming ``target_actor_network_params``, which it does not keep: see
    ``_DetachedUntrackedTargets``). ``.detach()`` gives the same values
    without a graph, so the results are those of
    :class:`~torchrl.objectives.CQLLoss`. The in-place
    clamp of ``log_alpha`` (``min_alpha`` / ``max_alpha``, line 988) is not
    supported: it would write into one agent's slice from inside vmap.
    """

    @property
    def _alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def _get_policy_actions(self, data, actor_params, num_actions=10):
        return super()._get_policy_actions(
            data, _DataIsDetach(actor_params), num_actions=num_actions
        )

    def _get_value_v(self, tensordict, _alpha, actor_params, qval_params):
        return super()._get_value_v(
            tensordict, _alpha, _DataIsDetach(actor_params), _DataIsDetach(qval_params)
        )


class VmapIQLLoss(_DetachedUntrackedTargets, IQLLoss):
    """:class:`~torchrl.objectives.IQLLoss` whose untracked targets are read with ``.detach()``.

    ``IQLLoss`` keeps no target value network (nor target actor): its value
    target reads ``target_value_network_params`` (torchrl 0.14.1,
    ``objectives/iql.py`` line 560), and under ``torch.compile``
    ``_clear_weakrefs`` names ``target_actor_network_params``; both reach
    ``LossModule``'s ``.data`` fallback, which vmap refuses. Read with
    ``.detach()`` instead, the results are those of
    :class:`~torchrl.objectives.IQLLoss`.
    """


def make_vmap_compatible(loss: LossModule) -> LossModule:
    """Adapts ``loss`` in place so that its forward runs under :func:`torch.vmap`.

    Swaps :class:`~torchrl.modules.TanhNormal` policies for
    :class:`OutOfPlaceTanhNormal`, a :class:`~torchrl.objectives.CQLLoss`
    for :class:`VmapCQLLoss` and an :class:`~torchrl.objectives.IQLLoss` for
    :class:`VmapIQLLoss` (same results). Raises ``ValueError`` for what
    cannot run under vmap.
    """
    # LossModule keeps its networks in __dict__, out of modules()
    networks = [m for m in vars(loss).values() if isinstance(m, nn.Module)]
    for module in (m for net in [loss, *networks] for m in net.modules()):
        if (
            isinstance(module, ProbabilisticTensorDictModule)
            and module.distribution_class is TanhNormal
        ):
            module.distribution_class = OutOfPlaceTanhNormal
    if type(loss) is CQLLoss:
        if loss.min_log_alpha is not None or loss.max_log_alpha is not None:
            raise ValueError(
                "AgentGroup: CQLLoss(min_alpha=..., max_alpha=...) clamps log_alpha in "
                "place inside its forward, which vmap cannot do per agent. Build the "
                "losses without min_alpha / max_alpha."
            )
        loss.__class__ = VmapCQLLoss
    elif type(loss) is IQLLoss:
        loss.__class__ = VmapIQLLoss
    elif isinstance(loss, IQLLoss):
        raise ValueError(
            f"AgentGroup: {type(loss).__name__} reads its value target through "
            "LossModule's fallback `value_network_params.data` "
            "(torchrl/objectives/common.py:621), which vmap refuses; only IQLLoss "
            "itself is adapted. Train its seeds as separate runs."
        )
    return loss
