"""Errors a user can act on: each carries a one-line message and the process exit code."""


class SpamGPTError(Exception):
    """A failure the user can fix (bad data, unreachable URL, corrupt file): one line, exit 1."""

    exit_code = 1


class ParamsError(SpamGPTError):
    """params.yaml (or a -S override) holds a value outside what is allowed: exit 2."""

    exit_code = 2
