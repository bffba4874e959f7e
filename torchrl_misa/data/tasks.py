"""What a dataset name says about its task: family, reference returns, eval env.

A "dataset" below is any of: a D4RL id (``"hopper-medium-v2"``), a prefixed id
(``"d4rl:..."``, ``"minari:mujoco/hopper/medium-v0"``), a local file
(``"d4rl_file:/path/x.hdf5"`` or a plain path ending in ``.hdf5``), an
:class:`~torchrl_misa.data.OfflineData`, or a buffer of the dataset
classes it loads.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: where the shipped demo dataset lives, relative to the repository root
DEMO_DATASET = "datasets/pendulum-medium-replay-v0.hdf5"
#: the same, as an absolute path (a source checkout or editable install)
DEMO_DATASET_PATH = Path(__file__).resolve().parents[2] / DEMO_DATASET

#: D4RL's reference returns (random policy, expert policy) per task family
D4RL_REF_RETURNS: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "kitchen": (0.0, 4.0),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "door": (-56.512833, 2880.5693087298737),
    "relocate": (-6.425911, 4233.877797728884),
}
ADROIT = ("pen", "hammer", "door", "relocate")

_LOCOMOTION_ENVS = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}
_ROBOTICS_ENVS = {
    "kitchen": "FrankaKitchen-v1",
    "pen": "AdroitHandPen-v1",
    "hammer": "AdroitHandHammer-v1",
    "door": "AdroitHandDoor-v1",
    "relocate": "AdroitHandRelocate-v1",
}
_ANTMAZE_ENVS = {
    "umaze": "AntMaze_UMaze-v5",
    "medium-play": "AntMaze_Medium-v5",
    "medium-diverse": "AntMaze_Medium_Diverse_GR-v5",
    "large-play": "AntMaze_Large-v5",
    "large-diverse": "AntMaze_Large_Diverse_GR-v5",
}


def split_source(dataset: str) -> tuple[str, str]:
    """``"d4rl:x"`` -> ``("d4rl", "x")``; a path -> ``("d4rl_file", path)``; a bare id -> ``("d4rl", id)``.

    Examples:
        >>> split_source("hopper-medium-v2")
        ('d4rl', 'hopper-medium-v2')
        >>> split_source("datasets/pendulum-medium-replay-v0.hdf5")
        ('d4rl_file', 'datasets/pendulum-medium-replay-v0.hdf5')
        >>> split_source("minari:mujoco/hopper/medium-v0")
        ('minari', 'mujoco/hopper/medium-v0')
    """
    dataset = str(dataset)
    if re.match(r"^[A-Za-z0-9_]+:", dataset) and not re.match(
        r"^[A-Za-z]:[\\/]", dataset
    ):
        prefix, name = dataset.split(":", 1)
        return prefix.lower(), name
    if dataset.endswith((".hdf5", ".h5")) or "/" in dataset or Path(dataset).exists():
        return "d4rl_file", dataset
    return "d4rl", dataset


def task_family(name: str) -> str | None:
    """The D4RL task family named in ``name`` (``"hopper"``, ``"antmaze"``, ...), or ``None``.

    Matches whole words of the name (split on ``-``, ``_``, ``/``, ``.``), so
    ``"pendulum"`` is not ``"pen"``.

    Examples:
        >>> task_family("antmaze-umaze-diverse-v2"), task_family("ant-medium-v2")
        ('antmaze', 'ant')
        >>> task_family("minari:D4RL/pen/human-v2"), task_family("pendulum-medium-replay-v0")
        ('pen', None)
        >>> task_family("/data/halfcheetah_medium_replay-v2.hdf5")
        'halfcheetah'
    """
    name = str(name)
    if name.endswith((".hdf5", ".h5")):
        name = Path(name).name  # folders of a path say nothing about the task
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in D4RL_REF_RETURNS:
            return word
    return None


def dataset_metadata(dataset: Any) -> dict:
    """``metadata/*`` of a file dataset, buffer or OfflineData (``{}`` for ids and absent files)."""
    if not isinstance(dataset, (str, Path)):
        meta = getattr(dataset, "metadata", None)
        return dict(meta) if isinstance(meta, dict) else {}
    source, name = split_source(str(dataset))
    if source != "d4rl_file":
        return {}
    from torchrl_misa.data.h5read import read_metadata

    path = Path(name).expanduser()
    # a file that is not here can still be named (scores by D4RL name)
    return read_metadata(path) if path.is_file() else {}


def dataset_name(dataset: Any) -> str:
    """A readable name: the id, the file path, a buffer's file or id, an OfflineData's name."""
    if isinstance(dataset, (str, Path)):
        return str(dataset)
    for attr in ("dataset_name", "file_path", "dataset_id", "name"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return str(value)
    raise TypeError(
        f"Expected a dataset id, a file path, an OfflineData or a dataset buffer, got "
        f"{type(dataset).__name__}."
    )


def d4rl_id_from_filename(path: str | Path) -> str | None:
    """The D4RL id whose download has this file name (``None`` if none).

    D4RL's file names do not always contain the id (antmaze, kitchen).

    Examples:
        >>> d4rl_id_from_filename("/data/kitchen_microwave_kettle_light_slider-v0.hdf5")
        'kitchen-partial-v0'
    """
    from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS

    name = Path(str(path)).name
    for dataset_id, url in D4RL_DATASETS.items():
        if url.rsplit("/", 1)[-1] == name:
            return dataset_id
    return None


def _d4rl_name(name: str) -> str:
    """A file of D4RL's downloads -> its id; anything else unchanged."""
    source, bare = split_source(name)
    if source == "d4rl_file":
        return d4rl_id_from_filename(bare) or name
    return name


def family_from(name: str, metadata: Mapping) -> str | None:
    """Task family from ``metadata`` (``task``/``env_id``), a D4RL file name, or ``name``.

    Examples:
        >>> family_from("datasets/x.hdf5", {"env_id": "Hopper-v5"})
        'hopper'
        >>> family_from("/data/kitchen_microwave_kettle_light_slider-v0.hdf5", {})
        'kitchen'
    """
    for key in ("task", "env_id", "env_name", "dataset_id"):
        if key in metadata:
            fam = task_family(str(metadata[key]))
            if fam is not None:
                return fam
    return task_family(_d4rl_name(str(name)))


def dataset_family(dataset: Any) -> str | None:
    """:func:`family_from` of ``dataset``'s name and metadata."""
    return family_from(dataset_name(dataset), dataset_metadata(dataset))


def dataset_env_id(dataset: Any) -> str:
    """The Gymnasium id to evaluate a policy trained on ``dataset``.

    * files made by ``tools/generate_dataset.py``: ``metadata/env_id``;
    * ``halfcheetah-*``, ``hopper-*``, ``walker2d-*``, ``ant-*``: the MuJoCo
      ``-v5`` tasks of Gymnasium;
    * antmaze, kitchen, adroit: the ``gymnasium-robotics`` tasks (error if that
      package is missing). Their observation layout follows Minari's
      ``D4RL/*`` datasets, not the original D4RL files.

    Examples:
        >>> dataset_env_id("halfcheetah-medium-replay-v2"), dataset_env_id("d4rl:walker2d-expert-v2")
        ('HalfCheetah-v5', 'Walker2d-v5')
    """
    meta = dataset_metadata(dataset)
    if "env_id" in meta:
        return str(meta["env_id"])
    fam = dataset_family(dataset)
    name = _d4rl_name(dataset_name(dataset))
    if fam in _LOCOMOTION_ENVS:
        return _LOCOMOTION_ENVS[fam]
    if fam is None:
        raise ValueError(
            f"Cannot tell which environment {name!r} comes from: it is not a D4RL task "
            "name and its file has no 'metadata/env_id'. Pass the Gymnasium id yourself."
        )
    if importlib.util.find_spec("gymnasium_robotics") is None:
        raise ImportError(
            f"Evaluating on {name!r} needs the {fam} environments of gymnasium-robotics: "
            "`pip install gymnasium-robotics` (and `import gymnasium_robotics` before "
            "gymnasium.make)."
        )
    if fam == "antmaze":
        lowered = name.lower().replace("_", "-")
        for key, env_id in _ANTMAZE_ENVS.items():
            if key in lowered:
                return env_id
        return _ANTMAZE_ENVS["umaze"]
    return _ROBOTICS_ENVS[fam]
