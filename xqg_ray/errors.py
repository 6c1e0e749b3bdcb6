"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class XqgError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class InputError(XqgError, ValueError):
    """Bad input data: the message names the file, row and field."""


class ConfigError(XqgError, ValueError):
    """Bad configuration: unknown names, out-of-range values, missing keys."""


class StorageError(XqgError, OSError):
    """A path, bucket or object that cannot be read or written."""


class ModelError(XqgError, RuntimeError):
    """A model that cannot be loaded (no weights, wrong type) or produced invalid output."""
