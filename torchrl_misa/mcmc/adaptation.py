"""Multiplicative step-size adaptation toward a target acceptance probability.

The rule is TensorFlow Probability's ``SimpleStepSizeAdaptation`` (the one the
published MISA sampler uses): after each adaptation step, a step size whose
chains' mean acceptance probability exceeds ``target_accept`` is multiplied by
``1 + rate``, otherwise divided by ``1 + rate``. It is kept apart from the
kernel so that the kernel stays a pure function of its inputs.
"""

from __future__ import annotations

from torch import Tensor


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
