"""The errors the dataset loaders raise, each with what to do in its message."""


class DatasetFormatError(ValueError):
    """A dataset file or buffer does not follow the D4RL layout or holds bad values."""


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither cached locally nor downloadable from here."""


class CacheDamagedError(RuntimeError):
    """A cache folder exists but cannot be trusted; the message says why."""


class CacheWriteError(RuntimeError):
    """A cache cannot be written (no space, read-only, no permission); names the folder."""
