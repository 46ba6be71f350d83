"""The CLI's user-error type."""


class CliError(Exception):
    """A user error: printed as ``error: ...``, exit status 2."""
