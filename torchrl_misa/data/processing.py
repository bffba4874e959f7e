"""The paper's data processing, as TorchRL transforms applied when sampling.

* actions clipped to ``[-0.999, 0.999]`` (keeps ``atanh`` of dataset actions
  finite in the tanh-Gaussian log-likelihood);
* antmaze rewards ``r' = (r - 0.5) * 4``;
* kitchen and adroit rewards min-max scaled to ``[-1, 1]`` with the dataset's
  reward range;
* optional observation normalisation with the dataset's mean and std, as an
  :class:`~torchrl.envs.transforms.ObservationNorm` whose ``loc``/``scale``
  buffers go into a checkpoint and onto the evaluation env.

All act on sampled batches; the stored data stay raw.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs.transforms import ClipTransform, ObservationNorm, RewardScaling

from torchrl_misa.data.tasks import ADROIT

REWARD_KEY = ("next", "reward")
#: smallest std used by the observation normaliser (constant features)
OBS_STD_MIN = 1e-3


def action_clip_transform(bound: float = 0.999) -> ClipTransform:
    """Clips ``action`` to ``[-bound, bound]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> t = action_clip_transform(0.999)
        >>> t(TensorDict(action=torch.tensor([[-1.0], [0.5], [1.0]]), batch_size=[3]))["action"].squeeze(-1)
        tensor([-0.9990,  0.5000,  0.9990])
    """
    return ClipTransform(in_keys=["action"], low=-bound, high=bound)


def antmaze_reward_transform() -> RewardScaling:
    """``r' = (r - 0.5) * 4 = 4 r - 2`` on ``("next", "reward")``."""
    return RewardScaling(loc=-2.0, scale=4.0, in_keys=[REWARD_KEY])


def minmax_reward_transform(r_min: float, r_max: float) -> RewardScaling:
    """Maps ``[r_min, r_max]`` onto ``[-1, 1]``: ``r' = 2 (r - r_min) / (r_max - r_min) - 1``."""
    if not r_max > r_min:
        raise ValueError(
            f"Cannot min-max scale rewards: the dataset's rewards are all {r_min}."
        )
    scale = 2.0 / (r_max - r_min)
    return RewardScaling(loc=-1.0 - r_min * scale, scale=scale, in_keys=[REWARD_KEY])


def reward_rule(family: str | None, reward_processing: str | None) -> str:
    """Resolves ``reward_processing`` (``"auto"``, ``"antmaze"``, ``"minmax"``, ``None``/``"none"``).

    ``"auto"``: antmaze -> ``"antmaze"``, kitchen and adroit -> ``"minmax"``,
    anything else -> ``"none"``.
    """
    if reward_processing is None:
        return "none"
    rule = str(reward_processing).lower()
    if rule == "auto":
        if family == "antmaze":
            return "antmaze"
        if family == "kitchen" or family in ADROIT:
            return "minmax"
        return "none"
    if rule not in ("none", "antmaze", "minmax"):
        raise ValueError(
            f"reward_processing must be 'auto', 'antmaze', 'minmax' or None, got {reward_processing!r}."
        )
    return rule


def observation_stats(
    data: TensorDictBase, key="observation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std of ``data[key]`` over all rows, in float64 then cast back."""
    obs = data[key]
    flat = obs.reshape(obs.shape[0], -1).to(torch.float64)
    mean = flat.mean(0)
    std = flat.std(0, correction=0)
    shape = obs.shape[1:]
    return mean.reshape(shape).to(obs.dtype), std.reshape(shape).to(obs.dtype)


def obs_norm_transform(
    loc: torch.Tensor,
    scale: torch.Tensor,
    in_keys=("observation",),
) -> ObservationNorm:
    """``(obs - loc) / max(scale, 1e-3)`` on ``in_keys``.

    Use ``in_keys=("observation",)`` for an env (TorchRL applies it to reset
    and step outputs) and add ``("next", "observation")`` for a replay buffer.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> t = obs_norm_transform(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0]))
        >>> t(TensorDict(observation=torch.tensor([[3.0, 2.5]]), batch_size=[1]))["observation"]
        tensor([[  1.0000, 500.0000]])
    """
    return ObservationNorm(
        loc=loc.clone(),
        scale=scale.clamp_min(OBS_STD_MIN).clone(),
        in_keys=list(in_keys),
        standard_normal=True,
    )


def obs_norm_from_state_dict(state: dict, in_keys=("observation",)) -> ObservationNorm:
    """Rebuilds the normaliser saved with ``obs_norm.state_dict()`` (e.g. from a checkpoint).

    Examples:
        >>> import torch
        >>> saved = obs_norm_transform(torch.tensor([1.0]), torch.tensor([2.0])).state_dict()
        >>> t = obs_norm_from_state_dict(saved)
        >>> t.loc, t.scale
        (tensor([1.]), tensor([2.]))
    """
    norm = obs_norm_transform(
        torch.zeros_like(state["loc"]), torch.ones_like(state["scale"]), in_keys
    )
    norm.load_state_dict(state)
    return norm
