"""The reference script's data processing and evaluation, in numpy, for training code in other frameworks.

``misa_offline.py`` reads a D4RL-layout file through
:func:`torchrl_misa.data.load_offline_data` and scores a policy with
``utils.evaluate`` on the env made by ``utils.make_environment``. This module
does the same with numpy, h5py, PyYAML and Gymnasium only (no torch), so that a
JAX learner (``train_authors.py``) sees the same transitions and is scored on
the same episodes:

* transitions: every row of the file, the last one included, with the file's
  ``next_observations`` (also across time limits); ``dones`` are the file's
  ``terminals`` (a time limit still bootstraps); actions clipped to
  ``[-c, c]``; the reward rule of the task family (antmaze ``4 r - 2``,
  kitchen and adroit min-max to ``[-1, 1]``, others unchanged); optional
  observation normalisation with the dataset's mean and population std
  (std floored at ``1e-3``).
* evaluation: ``episodes`` copies of the Gymnasium task. Before each
  evaluation the copies are seeded with TorchRL's seed chain from
  ``eval_seed(seed, step)`` (the script's scheme; ``seeding="once"`` is the
  script's scheme up to commit 45600be: the chain from ``seed + 10_000``, once,
  when the env is made). An evaluation resets each copy without a seed and
  steps all copies together for ``max_steps`` steps, resetting a copy that ends
  early (as TorchRL's rollout does); an episode's return counts rewards up to
  its first end. Actions in ``[-1, 1]`` are rescaled to the task's bounds,
  observations cast to float32.
* scores: D4RL's ``100 (R - R_random) / (R_expert - R_random)`` with the
  file's ``metadata/random_return`` and ``metadata/expert_return``.

``test/test_benchmarks.py`` checks each piece against the package's own code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "sota-implementations" / "misa"
DEMO_DATASET = REPO / "datasets" / "pendulum-medium-replay-v0.hdf5"
#: seed offset of the evaluation env seeded once (the script up to commit 45600be)
EVAL_SEED_OFFSET = 10_000
EVAL_SEEDINGS = ("per-evaluation", "once")
#: smallest std of the observation normaliser (``torchrl_misa.data.processing``)
OBS_STD_MIN = 1e-3
_MINMAX_FAMILIES = ("kitchen", "pen", "hammer", "door", "relocate")


# ------------------------------------------------------------------ settings
def load_config(overrides: list[str] = ()) -> dict:
    """The reference script's config (``config.yaml``, its preset, ``overrides``) as a dict.

    ``overrides`` are hydra-style ``key=value`` strings with the script's names,
    e.g. ``["preset=demo", "env.seed=3", "network.actor_hidden_sizes=[64,64]"]``;
    values are parsed as YAML. ``${demo_dataset:}`` is the shipped dataset.

    Examples:
        >>> cfg = load_config(["preset=demo", "env.seed=3", "loss.num_mcmc_samples=7"])
        >>> cfg["env"]["seed"], cfg["loss"]["num_mcmc_samples"], cfg["network"]["actor_hidden_sizes"]
        (3, 7, [64, 64])
        >>> load_config(["replay_buffer.batch_sise=3"])
        Traceback (most recent call last):
        ...
        KeyError: "Unknown setting 'replay_buffer.batch_sise': the script's config has no such key."
    """
    cfg = _yaml((CONFIG_DIR / "config.yaml").read_text())
    defaults = cfg.pop("defaults", [])
    preset = next((d["preset"] for d in defaults if isinstance(d, dict)), None)
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Expected key=value, got {item!r}.")
        key, value = item.split("=", 1)
        if key == "preset":
            preset = value
        else:
            pairs.append((key, _yaml(value)))
    if preset:
        path = CONFIG_DIR / "preset" / f"{preset}.yaml"
        if not path.exists():
            raise ValueError(f"Unknown preset {preset!r}: no {path}.")
        _merge(cfg, _yaml(path.read_text()))
    for key, value in pairs:
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise KeyError(
                    f"Unknown setting {key!r}: the script's config has no such key."
                )
            node = node[p]
        if leaf not in node:
            raise KeyError(
                f"Unknown setting {key!r}: the script's config has no such key."
            )
        node[leaf] = value
    if cfg["replay_buffer"]["dataset"] == "${demo_dataset:}":
        cfg["replay_buffer"]["dataset"] = str(DEMO_DATASET)
    return cfg


def _yaml(text: str):
    """YAML as OmegaConf reads it: ``1e-4`` is a float (PyYAML alone makes it a string)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=Loader)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


# ---------------------------------------------------------------------- data
def read_metadata(path: str | Path) -> dict:
    """The file's ``metadata/*`` datasets and attributes as python values."""
    import h5py

    meta = {}
    with h5py.File(path, "r") as f:
        if "metadata" not in f:
            return meta
        group = f["metadata"]
        meta.update({k: _py(v) for k, v in group.attrs.items()})
        for key, item in group.items():
            if isinstance(item, h5py.Dataset):
                meta[key] = _py(item[()])
    return meta


def _py(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def task_family(path: str | Path, meta: dict | None = None) -> str | None:
    """The D4RL task family (``"antmaze"``, ``"kitchen"``, ``"pen"``, ...) from metadata or file name.

    Examples:
        >>> task_family("x/antmaze-umaze-v2.hdf5", {}), task_family("d/pendulum-medium-replay-v0.hdf5", {})
        ('antmaze', None)
    """
    meta = read_metadata(path) if meta is None else meta
    names = [
        str(meta[k]) for k in ("task", "env_id", "env_name", "dataset_id") if k in meta
    ]
    names.append(Path(path).name)
    families = (
        "antmaze",
        *_MINMAX_FAMILIES,
        "halfcheetah",
        "hopper",
        "walker2d",
        "ant",
    )
    for name in names:
        for word in re.split(r"[^a-z0-9]+", name.lower()):
            if word in families:
                return word
    return None


def reward_rule(path: str | Path, reward_processing: str | None, meta=None) -> str:
    """``"none"``, ``"antmaze"`` or ``"minmax"``: the script's ``env.reward_processing`` resolved."""
    rule = "none" if reward_processing is None else str(reward_processing).lower()
    if rule == "auto":
        family = task_family(path, meta)
        # D4RL's antmaze downloads are named Ant_maze_*: "ant" is not their family
        if family in (None, "ant") and "maze" in Path(path).name.lower():
            raise ValueError(
                f"{path}: cannot tell whether this is an antmaze file from its name; "
                "pass replay_buffer.reward_processing=antmaze (or none) explicitly."
            )
        if family == "antmaze":
            return "antmaze"
        return "minmax" if family in _MINMAX_FAMILIES else "none"
    if rule not in ("none", "antmaze", "minmax"):
        raise ValueError(
            f"reward_processing must be 'auto', 'antmaze', 'minmax' or None, got {reward_processing!r}."
        )
    return rule


def read_transitions(
    path: str | Path,
    *,
    clip_actions: float | None = 0.999,
    reward_processing: str | None = "auto",
    normalize_observations: bool = False,
) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """All transitions of a D4RL-layout file, processed as the reference script's buffer.

    Returns:
        ``(data, obs_norm)``: ``data`` has float32 ``observations`` ``[N, o]``,
        ``actions`` ``[N, a]``, ``rewards`` ``[N]``, ``next_observations``
        ``[N, o]`` and ``dones`` ``[N]`` (the file's ``terminals``);
        ``obs_norm`` is ``(loc, scale)`` when ``normalize_observations``, else ``None``.

    Examples:
        >>> data, norm = read_transitions(DEMO_DATASET)
        >>> data["observations"].shape, data["actions"].shape, data["rewards"].shape, norm
        ((8400, 3), (8400, 1), (8400,), None)
        >>> round(float(np.abs(data["actions"]).max()), 6)
        0.999
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        missing = [
            k
            for k in (
                "observations",
                "actions",
                "rewards",
                "terminals",
                "next_observations",
            )
            if k not in f
        ]
        if missing:
            raise ValueError(
                f"{path}: no {missing} in the file; this harness needs a D4RL-layout "
                "file with next_observations (make one with `python tools/generate_dataset.py`)."
            )
        obs = f["observations"][:].astype(np.float32)
        next_obs = f["next_observations"][:].astype(np.float32)
        actions = f["actions"][:].astype(np.float32)
        rewards = f["rewards"][:].astype(np.float32).reshape(-1)
        dones = f["terminals"][:].astype(np.float32).reshape(-1)
    for name, value in (
        ("observations", obs),
        ("rewards", rewards),
        ("actions", actions),
    ):
        if not np.isfinite(value).all():
            raise ValueError(f"{path}: {name!r} holds NaN or inf values.")
    if actions.size and np.abs(actions).max() > 1.0:
        raise ValueError(
            f"{path}: actions outside [-1, 1] (max |a| = {np.abs(actions).max():.4g}); "
            "rescale them with the env's action bounds first."
        )
    if clip_actions is not None:
        actions = np.clip(actions, -clip_actions, clip_actions)
    rule = reward_rule(path, reward_processing)
    if rule == "antmaze":
        rewards = (rewards - 0.5) * 4.0
    elif rule == "minmax":
        low, high = float(rewards.min()), float(rewards.max())
        if not high > low:
            raise ValueError(f"Cannot min-max scale rewards: they are all {low}.")
        rewards = (rewards - low) * (2.0 / (high - low)) - 1.0
    obs_norm = None
    if normalize_observations:
        flat = obs.astype(np.float64)
        loc = flat.mean(0).astype(np.float32)
        scale = np.maximum(flat.std(0).astype(np.float32), OBS_STD_MIN)
        obs_norm = (loc, scale)
        obs, next_obs = (obs - loc) / scale, (next_obs - loc) / scale
    data = {
        "observations": obs,
        "actions": actions,
        "rewards": rewards.astype(np.float32),
        "next_observations": next_obs,
        "dones": dones,
    }
    return data, obs_norm


# -------------------------------------------------------------------- scores
def reference_returns(path: str | Path) -> tuple[float, float]:
    """``(R_random, R_expert)`` of the file's ``metadata``; a clear error without them."""
    meta = read_metadata(path)
    if "random_return" not in meta or "expert_return" not in meta:
        raise SystemExit(
            f"{path} has no metadata/random_return and metadata/expert_return. Pass "
            "them with --ref-returns LOW HIGH; the package's values are printed by "
            '`python -c "from torchrl_misa.data import reference_returns as r; '
            f"print(*r('{path}'))\"`."
        )
    return float(meta["random_return"]), float(meta["expert_return"])


def normalized_score(returns, low: float, high: float) -> np.ndarray:
    """``100 (R - low) / (high - low)``."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)


def dataset_episode_returns(path: str | Path) -> np.ndarray:
    """Raw returns of the file's complete episodes (a trailing cut-off one only if alone)."""
    import h5py

    with h5py.File(path, "r") as f:
        rewards = f["rewards"][:].astype(np.float64).reshape(-1)
        ends = f["terminals"][:].astype(bool).reshape(-1)
        if "timeouts" in f:
            ends |= f["timeouts"][:].astype(bool).reshape(-1)
    stops = np.flatnonzero(ends) + 1
    sums = [chunk.sum() for chunk in np.split(rewards, stops)[: len(stops)]]
    if not len(stops):
        sums = [rewards.sum()]
    return np.asarray(sums)


# ---------------------------------------------------------------- evaluation
def eval_seed(seed: int, step: int) -> int:
    """The script's evaluation seed after ``step`` updates of the run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def seed_chain(seed: int, n: int) -> list[int]:
    """The seeds TorchRL's batched env gives its ``n`` copies from ``seed``.

    Examples:
        >>> seed_chain(10_000, 3)[0]
        10000
    """
    seeds = [int(seed)]
    for _ in range(n - 1):
        rng = np.random.default_rng(seeds[-1])
        seeds.append(int.from_bytes(rng.bytes(8), "big") % (2**32 - 1))
    return seeds


class EvalEnvs:
    """``episodes`` copies of a Gymnasium task, stepped together.

    Args:
        env_id: Gymnasium id.
        episodes: copies (one episode each per evaluation).
        obs_norm: ``(loc, scale)`` applied to observations, or ``None``.
        seed: seeds the copies now (the ``"once"`` scheme), else ``None``.
    """

    def __init__(
        self,
        env_id: str,
        episodes: int,
        obs_norm: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int | None = None,
    ):
        import gymnasium as gym

        if env_id.startswith(("AntMaze", "FrankaKitchen", "AdroitHand")):
            import gymnasium_robotics  # noqa: F401  (registers these ids)
        self.envs = [gym.make(env_id) for _ in range(episodes)]
        space = self.envs[0].action_space
        self.low = space.low.astype(np.float64)
        self.high = space.high.astype(np.float64)
        self.obs_norm = obs_norm
        if seed is not None:
            self.seed(seed)

    def seed(self, seed: int) -> None:
        """Seeds copy ``i`` with the ``i``-th seed of TorchRL's chain (a seeded reset)."""
        for env, s in zip(self.envs, seed_chain(seed, len(self.envs))):
            env.reset(seed=s)

    def _obs(self, obs) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if self.obs_norm is not None:
            loc, scale = self.obs_norm
            obs = (obs - loc) / scale
        return obs

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        if np.allclose(self.low, -1.0) and np.allclose(self.high, 1.0):
            return action
        # TorchRL's ActionScaling: [-1, 1] onto [low, high]
        half = (self.high - self.low) / 2
        return (action * half + (self.high + self.low) / 2).astype(np.float32)

    def evaluate(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        max_steps: int,
        seed: int | None = None,
    ) -> np.ndarray:
        """Returns of one episode per copy, after seeding with ``seed`` if given.

        ``act`` maps observations ``[n, o]`` to actions ``[n, a]`` in ``[-1, 1]``.
        """
        if seed is not None:
            self.seed(seed)
        n = len(self.envs)
        obs = np.stack([self._obs(env.reset()[0]) for env in self.envs])
        returns = np.zeros(n)
        ended = np.zeros(n, bool)
        for t in range(max_steps):
            actions = np.asarray(act(obs), dtype=np.float32).reshape(n, -1)
            for i, env in enumerate(self.envs):
                o, r, term, trunc, _ = env.step(self._env_action(actions[i]))
                if not ended[i]:
                    returns[i] += np.float32(r)
                if term or trunc:
                    ended[i] = True
                    if t + 1 < max_steps:  # TorchRL resets a finished copy mid-rollout
                        o = env.reset()[0]
                obs[i] = self._obs(o)
        return returns

    def close(self) -> None:
        for env in self.envs:
            env.close()
