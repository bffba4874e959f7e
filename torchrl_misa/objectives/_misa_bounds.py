"""The mutual-information bounds of MISA (Eq. 8-10) on tensors of values.

Every function takes the critic (or MI critic) values at the ``k`` policy
samples of each state, ``[..., k, *B]``, and optionally ``valid`` ``[*B]``,
the loss mask of padded batches: masked states take no part in the bounds
that pool states (DV).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MI_ESTIMATORS = ("misa", "dv", "f", "ba")


def _log_mean_exp(x: Tensor, dims: tuple[int, ...], valid: Tensor | None) -> Tensor:
    """``log mean exp`` of ``x`` over ``dims``, counting only ``valid`` entries."""
    if valid is None:
        return x.logsumexp(dims) - math.log(math.prod(x.shape[d] for d in dims))
    valid = valid.expand_as(x)
    x = x.masked_fill(~valid, -math.inf)
    return x.logsumexp(dims) - valid.sum(dims).to(x.dtype).log()


def critic_gap(
    estimator: str, q_pi: Tensor, q_data: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Per-state critic regulariser ``[n_q, *B]`` (its batch mean is ``gap_i``).

    ``q_pi``: ``[n_q, k, *B]`` at policy samples, ``q_data``: ``[n_q, *B]``.
    ``"misa"`` (and the diagnostic gap of ``"ba"``): per-state log-mean-exp;
    ``"dv"``: one log-mean-exp over all ``(s, a_j)`` pairs of the batch;
    ``"f"``: the mean of ``exp(Q - 1)``.

    Examples:
        >>> import torch
        >>> q_pi = torch.zeros(2, 4, 3)  # 2 critics, k = 4 samples, 3 states
        >>> critic_gap("misa", q_pi, torch.ones(2, 3))
        tensor([[-1., -1., -1.],
                [-1., -1., -1.]])
    """
    if estimator == "dv":
        dims = tuple(range(1, q_pi.ndim))
        mask = None if valid is None else valid.reshape(1, 1, *valid.shape)
        lme = _log_mean_exp(q_pi, dims, mask)
        return lme.view(-1, *([1] * (q_data.ndim - 1))) - q_data
    if estimator == "f":
        return (q_pi - 1.0).exp().mean(1) - q_data
    return q_pi.logsumexp(1) - math.log(q_pi.shape[1]) - q_data


def log_normaliser(estimator: str, e_pi: Tensor, valid: Tensor | None = None) -> Tensor:
    """The bound's normalising term ``[*B]`` for energies ``e_pi`` ``[k, *B]``.

    ``log mean_j exp e_j(s)`` (MISA), the log-mean-exp over all pairs
    broadcast to every state (DV), ``mean_j exp(e_j(s) - 1)`` (f).
    """
    if estimator == "dv":
        dims = tuple(range(e_pi.ndim))
        mask = None if valid is None else valid.reshape(1, *valid.shape)
        return _log_mean_exp(e_pi, dims, mask).expand(e_pi.shape[1:])
    if estimator == "f":
        return (e_pi - 1.0).exp().mean(0)
    return e_pi.logsumexp(0) - math.log(e_pi.shape[0])


def correction_weight(
    estimator: str, e_pi: Tensor, valid: Tensor | None = None
) -> Tensor | float:
    """Per-state weight of the MCMC correction, from the bound's gradient.

    With ``Z(s) = E_pi exp T(s, a)`` estimated by the policy samples
    ``e_pi`` ``[k, *B]``: 1 (MISA), ``Z(s) / mean_s Z(s)`` (DV), ``Z(s) / e``
    (f).
    """
    if estimator == "misa":
        return 1.0
    log_z = e_pi.logsumexp(0) - math.log(e_pi.shape[0])
    if estimator == "dv":
        dims = tuple(range(log_z.ndim))
        return (log_z - _log_mean_exp(log_z, dims, valid)).exp()
    return (log_z - 1.0).exp()


def check_f_bound(gaps: Tensor, q_pi: Tensor) -> None:
    """Raises when the f-bound's ``exp(Q - 1)`` overflowed (a host sync)."""
    # exp(Q - 1) is not shift-invariant: it overflows float32 once Q > ~85,
    # which D4RL locomotion values reach; the loss would turn inf, then NaN.
    limit = math.log(torch.finfo(q_pi.dtype).max) + 1.0 - math.log(q_pi.shape[1])
    if not torch.isfinite(gaps).all() and q_pi.max() > limit:
        raise ValueError(
            "MISALoss(mi_estimator='f'): exp(Q - 1) overflowed (largest policy "
            f"action value {q_pi.max().item():.1f}, above {limit:.1f} in "
            f"{q_pi.dtype}). "
            "The f-bound depends on the scale of Q: scale the rewards down so "
            "that values stay below ~80, or use mi_estimator='misa' or 'dv', "
            "whose log-mean-exp is shift-invariant."
        )
