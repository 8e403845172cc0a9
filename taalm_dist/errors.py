"""User-facing errors: the CLI prints their message and exits 2, never a traceback."""


class TaalmError(Exception):
    """Base class for errors caused by user input (config, data, models), not by a bug."""


class ConfigError(TaalmError):
    """A config file or `key=value` override is wrong; the message names the key and the fix."""


class DataError(TaalmError):
    """A data file or row is wrong; the message names the file, the line and the field."""


class ModelError(TaalmError):
    """A model cannot be loaded or θ and φ do not fit together."""


class TrainingError(TaalmError):
    """Training cannot go on (e.g. too many non-finite steps in a row); the message says why."""
