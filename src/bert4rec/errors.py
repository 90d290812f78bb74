"""Errors a user can act on. The CLI prints their message and exits with status 2."""

from __future__ import annotations


class Bert4RecError(Exception):
    """Base class for every error caused by input rather than by a bug."""


class DataError(Bert4RecError):
    """A data file or frame cannot be read or leaves nothing to work with."""


class RunError(Bert4RecError):
    """A run directory is missing, incomplete, of an unknown format, or does not match the data."""


class CheckpointError(RunError):
    """An unfinished run's checkpoint cannot be resumed: damaged, or of another run."""


class ConfigError(Bert4RecError):
    """A configuration, preset or option is invalid."""


class DivergedError(RunError):
    """Training diverged before any epoch worth keeping: nothing was saved."""
