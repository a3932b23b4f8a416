"""User-facing errors.

Every error a user can fix is a :class:`DiscoRMError` whose message says what happened, where (file:line, key,
row) and how to fix it. ``cli.py`` catches them once and prints the message without a traceback.
"""


class DiscoRMError(Exception):
    """A problem the user can fix; the message is shown as is."""


class ConfigError(DiscoRMError):
    """A bad configuration key or value."""


class DataError(DiscoRMError):
    """Bad or unreadable preference data."""


class ModelError(DiscoRMError):
    """A model that cannot be found, loaded or combined with the requested head."""


class TrainingError(DiscoRMError):
    """Training cannot go on: a non-finite loss, a checkpoint that cannot be written."""


class TrainingInterrupted(DiscoRMError):
    """Training stopped on a signal (SIGTERM, SIGINT) after saving a checkpoint; the process exits with
    ``exit_code`` = 128 + the signal number, as a process killed by it would, so schedulers see it unfinished."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
