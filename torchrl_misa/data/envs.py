"""Environments that match the datasets: actions in ``[-1, 1]``, float32 observations."""

from __future__ import annotations

import importlib

import torch
from torchrl.envs import (
    ActionScaling,
    Compose,
    DoubleToFloat,
    GymEnv,
    Transform,
    TransformedEnv,
)

from torchrl_misa.data.tasks import dataset_env_id


def make_env(
    env_id: str,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    obs_norm: Transform | None = None,
    **kwargs,
) -> TransformedEnv:
    """A Gymnasium task as a TorchRL env in the datasets' conventions.

    Datasets store actions in ``[-1, 1]`` (D4RL's convention). Tasks with
    other bounds (``Pendulum-v1``: ``[-2, 2]``) get an
    :class:`~torchrl.envs.transforms.ActionScaling`, so the policy acts in
    ``[-1, 1]`` on every task. Float64 observations are cast to float32.

    Args:
        env_id: Gymnasium id (see :func:`~torchrl_misa.data.dataset_env_id`).
        seed: env seed.
        device: env device.
        obs_norm: an observation normaliser
            (:attr:`~torchrl_misa.data.OfflineData.obs_norm`); a copy is
            appended last.
        **kwargs: passed to :class:`~torchrl.envs.GymEnv`.

    Examples:
        >>> env = make_env("Pendulum-v1", seed=0)
        >>> env.action_spec.space.low, env.action_spec.space.high
        (tensor([-1.]), tensor([1.]))
        >>> env.rollout(3)["next", "observation"].shape
        torch.Size([3, 3])
    """
    if env_id.startswith(("AntMaze", "FrankaKitchen", "AdroitHand")):
        importlib.import_module("gymnasium_robotics")  # registers these ids
    base = GymEnv(env_id, device=device, **kwargs)
    transforms = []
    space = base.action_spec.space
    if not (
        torch.allclose(space.low, -torch.ones_like(space.low))
        and torch.allclose(space.high, torch.ones_like(space.high))
    ):
        transforms.append(ActionScaling())
    if any(
        spec.dtype == torch.float64 for spec in base.observation_spec.values(True, True)
    ):
        transforms.append(DoubleToFloat())
    if obs_norm is not None:
        transforms.append(obs_norm.clone())
    env = TransformedEnv(base, Compose(*transforms))
    if seed is not None:
        env.set_seed(seed)
    return env


def make_eval_env(dataset, **kwargs) -> TransformedEnv:
    """:func:`make_env` on :func:`~torchrl_misa.data.dataset_env_id` of ``dataset``."""
    return make_env(dataset_env_id(dataset), **kwargs)
