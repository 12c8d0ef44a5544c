"""The exception hierarchy: every user-facing error is a CarbongeoError.

The CLI turns a CarbongeoError into one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations


class CarbongeoError(Exception):
    """Base class of every error caused by the user's input, config or environment."""

    exit_code = 2


class ConfigError(CarbongeoError):
    """The pipeline file is wrong: unknown key, bad type, missing file, inconsistent grid."""


class InputDataError(CarbongeoError):
    """A source raster cannot be used: missing, corrupt, no CRS, no overlap, wrong band count."""


class GridError(CarbongeoError):
    """Grid parameters are inconsistent (e.g. scale does not divide tile_size)."""


class CheckpointError(CarbongeoError):
    """A checkpoint is missing, not a checkpoint, unsafe, or made for another configuration."""


class OutputError(CarbongeoError):
    """An output cannot be written (folder not writable, disk full)."""


class DivergenceError(CarbongeoError):
    """Training diverged, or weights or predictions are not finite (NaN or inf)."""


class StaleInputError(CarbongeoError):
    """A stage's input was made from another version of the pipeline file; rerun its command."""
