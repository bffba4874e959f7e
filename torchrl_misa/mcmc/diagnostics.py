"""What the sampler reports about its chains, and what it refuses or warns about."""

from __future__ import annotations

import os
import sys
import warnings

import torch
from tensordict import TensorDict
from torch import Size, Tensor


def summarize_chains(
    *,
    accepted_kept: Tensor,
    accepted_burnin: Tensor,
    divergent: Tensor,
    stuck: Tensor,
    nonfinite: Tensor,
    step_size: Tensor,
    num_kept_transitions: int,
    num_burnin: int,
    chain_dims: tuple[int, ...],
    batch: Size,
) -> TensorDict:
    """The sampler's info, one entry per batch element (chains averaged or counted).

    Per-chain inputs are ``[*chain_batch]`` (``step_size`` a 0-d tensor or
    ``[*chain_batch, 1]``); ``chain_dims`` are the chain dimensions to reduce.
    """
    like = accepted_kept
    step_per_chain = step_size.expand(*stuck.shape, 1).squeeze(-1)

    def mean(x: Tensor) -> Tensor:
        x = x.to(like.dtype)
        return (x.mean(chain_dims) if chain_dims else x).expand(batch).clone()

    def count(x: Tensor) -> Tensor:
        x = x.long()
        return (x.sum(chain_dims) if chain_dims else x).expand(batch).clone()

    return TensorDict(
        {
            "acceptance_rate": mean(accepted_kept / num_kept_transitions),
            "burnin_acceptance_rate": mean(accepted_burnin / max(num_burnin, 1)),
            "step_size": mean(step_per_chain),
            "num_divergent": count(divergent),
            "num_stuck_chains": count(stuck),
            "num_nonfinite_chains": count(nonfinite),
        },
        batch_size=batch,
    )


def check_chains(
    *, stuck: Tensor, nonfinite: Tensor, step_size: Tensor, num_kept_transitions: int
) -> None:
    """Raises on chains that never reached finite density; warns when nothing moved.

    One host sync for all checks.
    """
    # Repeated division stalls at the smallest subnormal number rather than 0.
    tiny = torch.finfo(step_size.dtype).tiny
    bad_step = ~(torch.isfinite(step_size) & (step_size >= tiny))
    n_nonfinite, n_stuck, n_bad_step, step_min, step_max = torch.stack(
        [
            nonfinite.sum().to(step_size.dtype),
            stuck.sum().to(step_size.dtype),
            bad_step.sum().to(step_size.dtype),
            step_size.min(),
            step_size.max(),
        ]
    ).tolist()
    n_chains = stuck.numel()
    if n_nonfinite:
        raise ValueError(
            f"{int(n_nonfinite)} of {n_chains} chains were still at a point where "
            "log_prob_fn or its gradient is not finite after burn-in, and their "
            "samples repeat that point. Start the chains where log_prob_fn is finite "
            "with a finite gradient, or give them more burn-in (num_burnin) or a "
            "smaller step_size to reach such a point. With validate=False the "
            "samples are returned and info['num_nonfinite_chains'] counts these chains."
        )
    steps = (
        f"{step_min:.3g}" if step_min == step_max else f"{step_min:.3g}..{step_max:.3g}"
    )
    if n_bad_step:
        warnings.warn(
            f"the step size of {int(n_bad_step)} of {n_chains} chains adapted to "
            f"{steps}: it underflowed (below the smallest normal number of its "
            "dtype) or overflowed, and those chains cannot move. Start from a "
            "step_size nearer the target's scale, adapt over fewer transitions "
            "(num_adaptation_steps), or check log_prob_fn: a flat density accepts "
            "every step and grows the step size, one that rejects every proposal "
            "shrinks it.",
            RuntimeWarning,
            stacklevel=_stacklevel_outside_package(),
        )
    elif n_stuck == n_chains:
        warnings.warn(
            f"no chain moved in the {num_kept_transitions} transitions after burn-in "
            f"(step size {steps}): every sample repeats its chain's position at the "
            "end of burn-in. Lower step_size, adapt it over more burn-in transitions "
            "(num_burnin, num_adaptation_steps), or check that log_prob_fn is finite "
            "around the starting points. info['num_stuck_chains'] counts such chains.",
            RuntimeWarning,
            stacklevel=_stacklevel_outside_package(),
        )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _stacklevel_outside_package() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package."""
    level, frame = 2, sys._getframe(
        2
    )  # the frame that calls ``warnings.warn``'s caller
    while (
        frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIR
    ):
        frame, level = frame.f_back, level + 1
    return level
