"""Checks of the sampler's settings, shared by every entry point.

They read Python numbers only, so they never wait on a device.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def check_counts(
    *,
    num_samples: int,
    num_burnin: int,
    num_leapfrog: int,
    num_chains: int = 1,
    thin: int = 1,
    num_adaptation_steps: int | None = None,
) -> int:
    """Checks the sampler's counts; returns ``num_adaptation_steps`` resolved.

    ``num_adaptation_steps=None`` means ``num_burnin - 1`` (4 of 5, TFP's
    ``int(0.8 * num_burnin)`` for the paper's setting), at least 0.

    Examples:
        >>> check_counts(num_samples=50, num_burnin=5, num_leapfrog=2)
        4
        >>> check_counts(num_samples=5, num_burnin=5, num_leapfrog=2, num_chains=2)
        Traceback (most recent call last):
        ...
        ValueError: num_samples (5) counts the samples of all chains together and must be divisible by num_chains (2).
    """
    for name, value, low in (
        ("num_samples", num_samples, 1),
        ("num_burnin", num_burnin, 0),
        ("num_leapfrog", num_leapfrog, 1),
        ("num_chains", num_chains, 1),
        ("thin", thin, 1),
    ):
        _check_integer(name, value, low)
    if num_samples % num_chains:
        raise ValueError(
            f"num_samples ({num_samples}) counts the samples of all chains together "
            f"and must be divisible by num_chains ({num_chains})."
        )
    if num_adaptation_steps is None:
        return max(num_burnin - 1, 0)
    _check_integer("num_adaptation_steps", num_adaptation_steps, 0)
    if num_adaptation_steps > num_burnin:
        raise ValueError(
            f"num_adaptation_steps must lie in [0, num_burnin={num_burnin}] (the step "
            f"size is adapted during burn-in only), got {num_adaptation_steps}."
        )
    return int(num_adaptation_steps)


def check_step_size(step_size: float) -> None:
    """A Python number used as the step size must be finite and positive."""
    if not isinstance(step_size, Real) or not (
        math.isfinite(step_size) and step_size > 0
    ):
        raise ValueError(f"step_size must be finite and positive, got {step_size!r}.")


def _check_integer(name: str, value, low: int) -> None:
    """Refuses anything but an integer >= ``low``.

    A float (even ``2.0``) would fail later as a ``TypeError`` deep in the
    sampler (``range(2.0)``).
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        kind = (
            f" ({type(value).__name__}; pass int({value!r}))" if _whole(value) else ""
        )
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}{kind}.")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _whole(value) -> bool:
    """A float holding a whole number (``2.0``), which ``int(value)`` gives exactly."""
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and int(value) == value
    )
