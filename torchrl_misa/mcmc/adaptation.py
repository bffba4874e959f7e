"""Multiplicative step-size adaptation toward a target acceptance probability.

The rule is TensorFlow Probability's ``SimpleStepSizeAdaptation`` (the one the
published MISA sampler uses): after each adaptation step, a step size whose
chains' mean acceptance probability exceeds ``target_accept`` is multiplied by
``1 + rate``, otherwise divided by ``1 + rate``. It is kept apart from the
kernel so that the kernel stays a pure function of its inputs, and it is
shaped as BlackJAX's adaptations: ``init``, ``update`` and ``final``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor


class StepSizeAdaptation(NamedTuple):
    """A step-size adaptation as three pure functions.

    ``init(step_size) -> state``, ``update(state, accept_prob) -> state`` after
    each adapted transition, ``final(state) -> step_size``; the step size to
    use while adapting is ``final(state)`` too.
    """

    init: Callable[[Tensor], Tensor]
    update: Callable[[Tensor, Tensor], Tensor]
    final: Callable[[Tensor], Tensor]


def simple_step_size_adaptation(
    target_accept: float = 0.75, adaptation_rate: float = 0.1
) -> StepSizeAdaptation:
    """Step-size adaptation by TFP's ``SimpleStepSizeAdaptation`` rule, as ``init``/``update``/``final``.

    Its state is the current step size: a 0-d tensor shared by all chains
    (adapted on their mean acceptance) or one per chain, ``[*batch, 1]``.

    Args:
        target_accept: acceptance probability aimed at, in ``(0, 1)``.
        adaptation_rate: the multiplicative ``rate``, in ``(0, 1)`` (TFP's
            default is 0.01).

    Examples:
        >>> import torch
        >>> adaptation = simple_step_size_adaptation(target_accept=0.75, adaptation_rate=0.1)
        >>> state = adaptation.init(torch.tensor(1.0))
        >>> state = adaptation.update(state, torch.tensor([0.9, 0.8]))  # mean 0.85: grow
        >>> adaptation.final(state)
        tensor(1.1000)
    """
    for name, value in (
        ("target_accept", target_accept),
        ("adaptation_rate", adaptation_rate),
    ):
        if not 0 < value < 1:  # also rejects NaN
            raise ValueError(f"{name} must lie in (0, 1), got {value}.")

    def init(step_size: Tensor) -> Tensor:
        return step_size

    def update(state: Tensor, accept_prob: Tensor) -> Tensor:
        return adapt_step_size(state, accept_prob, target_accept, adaptation_rate)

    def final(state: Tensor) -> Tensor:
        return state

    return StepSizeAdaptation(init, update, final)


def adapt_step_size(
    step_size: Tensor,
    accept_prob: Tensor,
    target_accept: float,
    adaptation_rate: float,
) -> Tensor:
    """One step of TFP-style ``SimpleStepSizeAdaptation``.

    Args:
        step_size: ``[*batch, 1]`` per chain, or a 0-d tensor shared by all chains.
        accept_prob: ``[*batch]`` acceptance probabilities ``min(1, exp(-dH))``
            of the last transition (0 for rejected non-finite proposals). With a
            shared step size they are averaged over the whole batch, as TFP does
            when the step size has fewer dimensions than the state.
        target_accept: acceptance probability aimed at.
        adaptation_rate: ``rate`` above (TFP's default is 0.01).

    Returns:
        the new step size, same shape as ``step_size``.

    Examples:
        >>> import torch
        >>> step = torch.ones(2, 1)
        >>> adapt_step_size(step, torch.tensor([0.9, 0.5]), 0.75, 0.1).squeeze(-1)
        tensor([1.1000, 0.9091])
        >>> adapt_step_size(torch.tensor(1.0), torch.tensor([0.9, 0.5]), 0.75, 0.1)
        tensor(0.9091)
    """
    if step_size.ndim == 0:
        accept_prob = accept_prob.mean()
    else:
        accept_prob = accept_prob.unsqueeze(-1)
    grow = accept_prob > target_accept
    return (step_size * (1.0 + adaptation_rate)).where(
        grow, step_size / (1.0 + adaptation_rate)
    )
