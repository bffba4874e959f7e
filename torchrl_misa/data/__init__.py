"""Offline datasets for MISA on TorchRL's dataset classes.

:func:`load_offline_data` turns a dataset name (a D4RL id, ``"minari:<id>"``,
a local D4RL-layout file) into an :class:`OfflineData`: a TorchRL replay
buffer with MISA's processing, and what evaluation and scores need.
:class:`GroupOfflineToOnlineReplayBuffer` mixes it with online transitions
(one buffer per agent) for fine-tuning online.

Importing this package has one side effect: it registers the new prefix
``"d4rl_file"`` (:class:`D4RLFileExperienceReplay`) in
:func:`torchrl.data.datasets.load_dataset`'s registry, unless TorchRL already
has one. Existing prefixes are left alone: ``load_dataset("d4rl:...")`` is
TorchRL's own class.
"""

from torchrl.data.datasets import register_dataset

from torchrl_misa.data.offline_data import (
    check_transitions,
    load_offline_data,
    load_offline_dataset,
    OfflineData,
)
from torchrl_misa.data.d4rl import D4RLFileExperienceReplay, OfflineD4RLExperienceReplay
from torchrl_misa.data.errors import (
    CacheDamagedError,
    CacheWriteError,
    DatasetFormatError,
    DatasetUnavailableError,
    OfflineDataError,
)
from torchrl_misa.data.envs import make_env, make_eval_env
from torchrl_misa.data.fingerprint import content_sha256
from torchrl_misa.data.h5read import as_bool_flags, read_metadata
from torchrl_misa.data.hdf5 import validate_d4rl_hdf5, write_d4rl_hdf5
from torchrl_misa.data.online_buffer import GroupOfflineToOnlineReplayBuffer
from torchrl_misa.data.processing import (
    action_clip_transform,
    antmaze_reward_transform,
    minmax_reward_transform,
    obs_norm_from_state_dict,
    obs_norm_transform,
    observation_stats,
)
from torchrl_misa.data.scores import (
    dataset_average_normalized_score,
    dataset_episode_returns,
    normalized_score,
    reference_returns,
)
from torchrl_misa.data.tasks import (
    D4RL_REF_RETURNS,
    dataset_env_id,
    DEMO_DATASET,
    DEMO_DATASET_PATH,
    task_family,
)


def __getattr__(name):
    # Imported on first use so that `python -m torchrl_misa.data.describe`
    # does not find its own module already loaded by the package.
    if name == "describe":
        from torchrl_misa.data.describe import describe

        # importing the submodule bound its name here: bind the function instead
        globals()["describe"] = describe
        return describe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# the one registration: a new prefix. One already there (a TorchRL that has it,
# or this package imported again) is left alone.
try:
    register_dataset("d4rl_file", D4RLFileExperienceReplay)
except (KeyError, ValueError):  # KeyError in torchrl 0.14, ValueError after
    pass

__all__ = [
    "D4RL_REF_RETURNS",
    "D4RLFileExperienceReplay",
    "DEMO_DATASET",
    "DEMO_DATASET_PATH",
    "DatasetFormatError",
    "DatasetUnavailableError",
    "GroupOfflineToOnlineReplayBuffer",
    "OfflineD4RLExperienceReplay",
    "OfflineData",
    "OfflineDataError",
    "action_clip_transform",
    "antmaze_reward_transform",
    "as_bool_flags",
    "CacheDamagedError",
    "CacheWriteError",
    "check_transitions",
    "content_sha256",
    "dataset_average_normalized_score",
    "describe",
    "dataset_env_id",
    "dataset_episode_returns",
    "load_offline_data",
    "load_offline_dataset",
    "make_env",
    "make_eval_env",
    "minmax_reward_transform",
    "normalized_score",
    "obs_norm_from_state_dict",
    "obs_norm_transform",
    "observation_stats",
    "read_metadata",
    "reference_returns",
    "task_family",
    "validate_d4rl_hdf5",
    "write_d4rl_hdf5",
]
