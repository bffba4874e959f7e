"""The HMC chain state and the log-density evaluation it needs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor

LogProbFn = Callable[[Tensor], Tensor]
ValueAndGradFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def value_and_grad(log_prob_fn: LogProbFn, position: Tensor) -> tuple[Tensor, Tensor]:
    """``log_prob_fn(position)`` and its gradient w.r.t. ``position`` only.

    ``torch.autograd.grad`` with ``inputs=position`` leaves the ``.grad`` of any
    parameter inside ``log_prob_fn`` untouched, and the detached copy keeps the
    caller's graph out of it. Works under an outer ``torch.no_grad()``.
    Non-finite log-densities or gradients are returned as ``-inf`` / zeros so
    that the kernel rejects them instead of propagating NaNs. Under a
    ``torch.func`` transform (``torch.vmap``) the gradient is taken with
    :func:`functional_value_and_grad` instead (and a log density that ignores
    the position is not detected).

    Raises:
        ValueError: if the output has the wrong shape, or does not depend on
            ``position`` through a differentiable path (no gradient reaches it).

    Examples:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> log_prob, grad = value_and_grad(lambda x: net(x).squeeze(-1), torch.ones(3, 2))
        >>> torch.allclose(grad, net.weight.expand(3, 2)), net.weight.grad is None
        (True, True)
        >>> value_and_grad(lambda x: x.sqrt().sum(-1), -torch.ones(1, 2))
        (tensor([-inf]), tensor([[0., 0.]]))
    """
    if _in_functorch_transform():
        # Under torch.vmap (e.g. several agents' losses in one vmapped call) a
        # fresh leaf cannot require grad; torch.func takes the same gradient.
        return functional_value_and_grad(log_prob_fn)(position)
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        log_prob = log_prob_fn(x)
        _check_log_prob(log_prob, position)
        grad = None
        if log_prob.requires_grad:
            (grad,) = torch.autograd.grad(log_prob.sum(), x, allow_unused=True)
    if grad is None:
        raise ValueError(
            "log_prob_fn's output does not depend on its input: no gradient reaches "
            "the position. HMC needs a log density that is a differentiable function "
            "of the position; make sure log_prob_fn uses its argument and neither "
            "detaches it nor runs under torch.no_grad()."
        )
    return _sanitize(log_prob.detach(), grad.detach())


def functional_value_and_grad(log_prob_fn: LogProbFn) -> ValueAndGradFn:
    """A ``torch.func`` version of :func:`value_and_grad`, traceable by ``torch.compile``.

    Examples:
        >>> import torch
        >>> vg = functional_value_and_grad(lambda x: -0.5 * (x**2).sum(-1))
        >>> vg(torch.ones(2, 3))
        (tensor([-1.5000, -1.5000]), tensor([[-1., -1., -1.],
                [-1., -1., -1.]]))
    """

    def summed(x):
        log_prob = log_prob_fn(x)
        return log_prob.sum(), log_prob

    grad_fn = torch.func.grad_and_value(summed, has_aux=True)

    def fn(position: Tensor) -> tuple[Tensor, Tensor]:
        grad, (_, log_prob) = grad_fn(position)
        _check_log_prob(log_prob, position)
        return _sanitize(log_prob.detach(), grad.detach())

    return fn


def _in_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ...) is active.

    PyTorch has no public equivalent of this private query (``torch.func``
    exposes the transforms, not their state); PyTorch's own
    ``torch.autograd.backward`` and ``autograd.Function`` make the same call.
    It is kept here, in one place, so that a public API can replace it alone.
    """
    return torch._C._are_functorch_transforms_active()


def _check_log_prob(log_prob, position: Tensor) -> None:
    if not isinstance(log_prob, Tensor) or log_prob.shape != position.shape[:-1]:
        got = tuple(log_prob.shape) if isinstance(log_prob, Tensor) else type(log_prob)
        raise ValueError(
            f"log_prob_fn must map positions of shape {tuple(position.shape)} to a "
            f"tensor of shape {tuple(position.shape[:-1])}, got {got}."
        )


def _sanitize(log_prob: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    finite = torch.isfinite(log_prob) & torch.isfinite(grad).all(-1)
    log_prob = torch.where(finite, log_prob, torch.full_like(log_prob, -torch.inf))
    grad = torch.where(finite.unsqueeze(-1), grad, torch.zeros_like(grad))
    return log_prob, grad


def init_state(position: Tensor, value_and_grad_fn: ValueAndGradFn) -> TensorDict:
    """Chain state ``{"position", "log_prob", "grad"}`` with batch size ``position.shape[:-1]``.

    Examples:
        >>> import torch
        >>> from functools import partial
        >>> vg = partial(value_and_grad, lambda x: -0.5 * (x**2).sum(-1))
        >>> state = init_state(torch.ones(5, 3), vg)
        >>> state.batch_size, state["log_prob"][0].item(), state["grad"][0].tolist()
        (torch.Size([5]), -1.5, [-1.0, -1.0, -1.0])
    """
    log_prob, grad = value_and_grad_fn(position)
    return TensorDict(
        {"position": position.detach(), "log_prob": log_prob, "grad": grad},
        batch_size=position.shape[:-1],
    )
