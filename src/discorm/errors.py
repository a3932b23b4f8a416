"""User-facing errors.

Every error a user can fix is a :class:`DiscoRMError` whose message says what happened, where (file:line, key,
row) and how to fix it. ``cli.py`` catches them once and prints the message without a traceback.
"""

from __future__ import annotations


class DiscoRMError(Exception):
    """A problem the user can fix; the message is shown as is."""


class ConfigError(DiscoRMError):
    """A bad configuration key or value."""


class DataError(DiscoRMError):
    """Bad or unreadable preference data."""


class ModelError(DiscoRMError):
    """A model that cannot be found, loaded or combined with the requested head."""


class DestinationError(DiscoRMError):
    """A path a command will not write: it holds what the user did not ask to replace, it is what the command
    reads, or it is a file where a folder is written (or the other way round)."""


class TrainingError(DiscoRMError):
    """Training cannot go on: a non-finite loss, a checkpoint that cannot be written."""


class TrainingInterrupted(DiscoRMError):
    """Training stopped on a signal (SIGTERM, SIGINT) after saving a checkpoint; the process exits with
    ``exit_code`` = 128 + the signal number, as a process killed by it would, so schedulers see it unfinished."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def check_choice(key: str, value, allowed: tuple) -> None:
    """Raise a ConfigError naming the key, the bad value and the allowed values."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; allowed values: {', '.join(map(str, allowed))}.")


def check_range(key: str, value: float | None, low: float | None = None, high: float | None = None) -> None:
    """Raise a ConfigError unless ``value`` (None: unset) lies in [low, high]."""
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{key}={value!r} is out of range; it must lie in {bounds}.")
