"""Errors the tool raises on bad input; the CLI turns each into a one-line message."""


class SkipGanomalyError(Exception):
    """Base class: anything the user can fix by changing the input or the options."""


class DataError(SkipGanomalyError):
    """A folder, image or array that cannot be used."""


class CheckpointError(SkipGanomalyError):
    """A saved detector that is missing, truncated, foreign or of another format version."""


class ConfigError(SkipGanomalyError):
    """An option value outside what a model or the training loop supports."""
