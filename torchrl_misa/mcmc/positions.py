"""Positions as one tensor or as a TensorDict of tensors.

The kernel works on one flat tensor ``[*batch, d]``. A TensorDict position is
raveled into it (its entries' trailing dimensions flattened and concatenated)
and the samples are unraveled back, as ``jax.flatten_util.ravel_pytree`` does
for BlackJAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

Position = Tensor | TensorDictBase


def ravel_position(
    position: Position, name: str = "init"
) -> tuple[Tensor, Callable[[Tensor], Position]]:
    """A flat ``[*batch, d]`` tensor holding ``position`` and its inverse.

    A tensor is its own flat form (``d`` is its last dimension). A TensorDict
    with batch size ``batch`` contributes each entry ``[*batch, *event]`` as
    ``prod(event)`` columns; ``unravel`` maps ``[*lead, d]`` back to a
    TensorDict with batch size ``lead`` (any leading shape).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"x": torch.zeros(4, 2), "y": torch.ones(4, 3, 2)}, [4])
        >>> flat, unravel = ravel_position(td)
        >>> flat.shape
        torch.Size([4, 8])
        >>> back = unravel(flat.expand(5, 4, 8))
        >>> back.batch_size, back["y"].shape, bool((back["y"] == 1).all())
        (torch.Size([5, 4]), torch.Size([5, 4, 3, 2]), True)
    """
    if isinstance(position, Tensor):
        if position.ndim < 1:
            raise ValueError(
                f"{name} must be a tensor of shape [*batch, d] (or a TensorDict of "
                f"such tensors), got a 0-d tensor."
            )
        _check_float(name, position)
        return position, _identity
    if not isinstance(position, TensorDictBase):
        raise ValueError(
            f"{name} must be a tensor of shape [*batch, d] or a TensorDict of "
            f"tensors, got {type(position).__name__}."
        )
    keys = list(position.keys(include_nested=True, leaves_only=True))
    if not keys:
        raise ValueError(f"{name} is a TensorDict without entries.")
    batch = position.batch_size
    events, columns = [], []
    for key in keys:
        value = position.get(key)
        _check_float(f"{name}[{key!r}]", value)
        events.append(value.shape[len(batch) :])
        columns.append(value.reshape(*batch, -1))
    dtypes = {c.dtype for c in columns}
    if len(dtypes) > 1:
        raise ValueError(
            f"the entries of {name} must share one dtype, got {sorted(map(str, dtypes))}."
        )
    sizes = [math.prod(event) for event in events]

    def unravel(flat: Tensor) -> TensorDictBase:
        lead = flat.shape[:-1]
        pieces = flat.split(sizes, -1)
        return TensorDict(
            {k: p.reshape(*lead, *e) for k, p, e in zip(keys, pieces, events)},
            batch_size=lead,
        )

    return torch.cat(columns, -1), unravel


def ravel_like(value: Position, name: str, like: Position) -> Tensor:
    """``value`` raveled in the layout of the position ``like``.

    A tensor position takes a tensor; a TensorDict position a TensorDict with
    the same entries, each broadcastable to that entry's shape.
    """
    if isinstance(like, Tensor):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a tensor when init is one.")
        return value
    keys = list(like.keys(include_nested=True, leaves_only=True))
    if not isinstance(value, TensorDictBase) or set(
        value.keys(include_nested=True, leaves_only=True)
    ) != set(keys):
        raise ValueError(
            f"{name} must be a TensorDict with the entries of init, {keys}, when "
            "init is a TensorDict."
        )
    columns = []
    for key in keys:
        target = like.get(key)
        try:
            entry = value.get(key).expand(target.shape)
        except RuntimeError:
            raise ValueError(
                f"{name}[{key!r}] of shape {tuple(value.get(key).shape)} does not "
                f"broadcast to init[{key!r}]'s shape {tuple(target.shape)}."
            ) from None
        columns.append(entry.reshape(*like.batch_size, -1).to(target.dtype))
    return torch.cat(columns, -1)


def _check_float(name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {value.dtype}.")


def _identity(flat: Tensor) -> Tensor:
    return flat
