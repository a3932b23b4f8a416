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
