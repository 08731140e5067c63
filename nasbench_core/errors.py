"""The `UserError` family: mistakes a user can fix, reported as one line with exit status 2.

Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user caused and can fix; the message must name it in one line."""


class ConfigError(UserError):
    """A config file or `--set` override is malformed, unknown or of the wrong type."""


class DataError(UserError):
    """A dataset is unknown, missing on disk, or has an unusable layout."""


class RunError(UserError):
    """A run directory is missing, incomplete or cannot be resumed."""


class ArchError(UserError):
    """An architecture does not belong to a search space."""


class CheckpointError(UserError):
    """A checkpoint is missing, unsafe, or does not fit the model it is loaded into."""
