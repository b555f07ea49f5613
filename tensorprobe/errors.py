"""The project's error types. Core code raises these; cli.py turns them into one `error:` line.

Exit codes: 2 when the command line itself is wrong (unknown option, unknown layer, a path
that does not exist, an output that exists), 1 when a well-formed command fails on the
contents of a file or while running, 130 on Ctrl-C, 143 on SIGTERM.
"""

USAGE = 2
FAILURE = 1
INTERRUPTED = 130  # Ctrl-C (SIGINT)
TERMINATED = 143  # SIGTERM (kill, a CI timeout)


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so a dump unwinds and cleans up as on Ctrl-C."""


class TensorprobeError(Exception):
    """Base class: a problem with the user's input, reported in one line."""

    exit_code = FAILURE


class UsageError(TensorprobeError):
    """The command line is wrong: an option value, a path, a name that does not exist."""

    exit_code = USAGE


class UnknownLayerError(UsageError):
    """A --layer that names no layer, or names several."""


class OutputExistsError(UsageError):
    """The output path exists and --overwrite was not given."""


class ModelLoadError(TensorprobeError):
    """The model file exists but cannot be loaded."""


class UnsafeModelError(ModelLoadError):
    """Loading the model would run code stored in it, and --unsafe was not given."""


class InputError(TensorprobeError):
    """An input file exists but its contents do not fit the model."""


class WriteError(TensorprobeError):
    """The output could not be written."""


class DumpReadError(TensorprobeError):
    """A file given to `summary` or `diff` is not a readable tensorprobe dump: not HDF5,
    damaged or truncated, another program's HDF5 file, or a newer format."""


class IncompleteDumpError(DumpReadError):
    """A dump whose `complete` attribute is not true (an interrupted or running dump), read
    without --allow-incomplete."""


class Interrupted(TensorprobeError):
    """Ctrl-C or SIGTERM, after the command cleaned up."""

    def __init__(self, terminated):
        super().__init__("interrupted")
        self.exit_code = TERMINATED if terminated else INTERRUPTED


class MergeError(TensorprobeError):
    """Shard files that do not make one dump: another job, a shard missing or given twice."""
