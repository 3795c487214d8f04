"""The one family of errors a user can fix, and the line the CLI prints for them.

Every `UserError` names the file, line, field or argument at fault and what was expected; the CLI prints it as
one line `error: ...` and exits with code 2. Any other exception is a bug and keeps its traceback. `UserError`
is a `ValueError`, so callers' `except ValueError` keeps working. Standard library only (layer 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix: a config, a data file, a model folder, a request."""


class ConfigError(UserError):
    """A config value, key or combination that cannot work (names the key and the allowed values)."""


class DataError(UserError):
    """A data file that cannot be used (names the file and, where known, the line)."""


class ModelFolderError(UserError):
    """A model or checkpoint folder that cannot be used (names the folder and the reason)."""


class RequestError(UserError):
    """An inference request that cannot be served: a decoding option out of range, an empty text, a model of
    the other kind (names the option and its allowed range)."""
