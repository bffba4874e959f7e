"""The errors the dataset loaders raise, each with what to do in its message."""


class OfflineDataError(Exception):
    """A dataset cannot be loaded as asked; the message says what to do."""


class DatasetFormatError(OfflineDataError, ValueError):
    """A dataset file or buffer does not follow the D4RL layout or holds bad values."""


class DatasetUnavailableError(OfflineDataError, RuntimeError):
    """The dataset is neither cached locally nor downloadable from here."""


class CacheDamagedError(OfflineDataError, RuntimeError):
    """A cache folder exists but cannot be trusted; the message says why."""


class CacheWriteError(OfflineDataError, RuntimeError):
    """A cache cannot be written (no space, read-only, no permission); names the folder."""
