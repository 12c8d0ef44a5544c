"""The exception hierarchy: every user-facing error is a CarbongeoError.

Messages name the parameter or config key at fault (``batch_size``, ``train.device``) and say how
to fix it; they never name a command-line flag. The CLI turns a CarbongeoError into one line on
stderr and exit code 2, with no traceback, and names the flag the user gave in place of the
parameter (see :attr:`CarbongeoError.param`).

Every class keeps its attributes when pickled, so an error raised in a dask worker comes back to
the caller as itself.
"""

from __future__ import annotations

from pathlib import Path


class CarbongeoError(Exception):
    """Base class of every error caused by the user's input, config or environment.

    Args:
        message: What is wrong and how to fix it.
        param: The parameter or config key the message is about; the error then reads
            ``"<param>: <message>"``.

    Attributes:
        message: The message without the ``param`` prefix.
        param: The parameter or config key, or None.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.message = message
        self.param = param


class ConfigError(CarbongeoError):
    """The pipeline file is wrong: unknown key, bad type, missing file, inconsistent grid."""


class ConfigNotFoundError(ConfigError):
    """The pipeline file does not exist.

    Attributes:
        path: The file that was looked for.
    """

    def __init__(self, message: str = "", *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class ParameterError(ConfigError):
    """An argument of a call is invalid: out of range, unknown, or not among the config's years.

    Most arguments override a config key (``batch_size`` overrides ``mosaic.batch_size``), hence
    a kind of ConfigError; :attr:`param` names the argument.
    """


class DeviceUnavailableError(ParameterError):
    """The torch device asked for (``cuda``) is not available on this machine."""


class InputDataError(CarbongeoError):
    """A source raster cannot be used: missing, corrupt, no CRS, no overlap, wrong band count."""


class RunFileError(InputDataError):
    """A file an earlier stage wrote (tile cubes, index, split, predictions) is damaged or stale.

    The message names the command that writes the file again.
    """


class MissingRunFileError(RunFileError):
    """A file an earlier stage writes does not exist yet; the message names that command."""


class GridError(CarbongeoError):
    """Grid parameters are inconsistent (e.g. scale does not divide tile_size)."""


class CheckpointError(CarbongeoError):
    """A checkpoint is missing, not a checkpoint, unsafe, or made for another configuration."""


class ResumeMismatchError(CheckpointError):
    """``checkpoints/latest.pt`` comes from another configuration or split than this run.

    The fix is to delete it or to train without resuming; the message says so.
    """


class OutputError(CarbongeoError):
    """An output cannot be written (folder not writable, disk full)."""


class ClusterError(CarbongeoError):
    """The dask cluster failed: the scheduler is unreachable, or a worker or connection was lost."""


class WorkerError(CarbongeoError):
    """A worker process (a benchmark measurement) stopped on a user error, given as its message."""


class UnitsError(CarbongeoError):
    """Units cannot be read or converted (e.g. an emission unit without a mass)."""


class DivergenceError(CarbongeoError):
    """Training diverged, or weights or predictions are not finite (NaN or inf)."""


class StaleInputError(CarbongeoError):
    """A stage's input was made from another version of the pipeline file; rerun its command."""
