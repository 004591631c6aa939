"""Error hierarchy. Every user-facing failure is an EbmctlError with a one-line message."""

from __future__ import annotations


class EbmctlError(Exception):
    """Base error: the CLI prints ``Error: <message>`` and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(EbmctlError):
    exit_code = 2


class InputError(EbmctlError):
    exit_code = 3


class ArtifactError(EbmctlError):
    exit_code = 4


class PluginError(EbmctlError):
    exit_code = 5


class NotAvailableError(EbmctlError):
    exit_code = 6


class NumericalError(EbmctlError):
    exit_code = 7


class OutputExistsError(EbmctlError):
    """An output would replace an earlier file (allowed only with --force or --resume)."""

    exit_code = 8
