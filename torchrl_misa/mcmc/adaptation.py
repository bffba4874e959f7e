"""Multiplicative step-size adaptation toward a target acceptance probability."""

from __future__ import annotations

from torch import Tensor


def adapt_step_size(
    step_size: Tensor,
    accept_prob: Tensor,
    target_accept: float,
    adaptation_rate: float,
) -> Tensor:
    """One step of TFP-style ``SimpleStepSizeAdaptation``.

    Each step size grows by ``1 + rate`` where its chains accepted more often
    than ``target_accept`` and shrinks by ``1 - rate`` elsewhere.

    Args:
        step_size: ``[*batch, 1]`` per chain, or a scalar shared by all chains.
        accept_prob: ``[*batch]`` acceptance probabilities of the last transition.
            With a scalar step size they are averaged over the whole batch.
    """
    if step_size.ndim == 0:
        accept_prob = accept_prob.mean()
    else:
        accept_prob = accept_prob.unsqueeze(-1)
    factor = 1.0 + adaptation_rate * ((accept_prob > target_accept).float() * 2 - 1)
    return step_size * factor
