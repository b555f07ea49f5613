"""The project's error types. Core code raises these; the CLI (tensorprobe/cli/) turns them into one `error:` line.

Exit codes: 2 when the command line itself is wrong (unknown option, unknown layer, a path
that does not exist, an output that exists), 1 when a well-formed command fails on the
contents of a file or while running, 130 on Ctrl-C, 143 on SIGTERM.
"""

import contextlib

USAGE = 2
FAILURE = 1
INTERRUPTED = 130  # Ctrl-C (SIGINT)
TERMINATED = 143  # SIGTERM (kill, a CI timeout)


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so a dump unwinds and cleans up as on Ctrl-C."""


class TensorprobeError(Exception):
    """Base class: a problem with the user's input, reported in one line. `argument`: the
    Python API's name of the argument it is about (`layers`, `output`), or None; its message
    names it in the words of whoever asked (see `name`)."""

    exit_code = FAILURE

    def __init__(self, message="", argument=None):
        super().__init__(message)
        self.argument = argument if argument is not None and is_argument(argument) else None


# The Python API's argument names -> the CLI's option names. Messages name an argument with
# `name(argument)`: the option while a CLI command runs (`cli_words`), the argument otherwise,
# so the CLI says `--layer` where the API says `layers`.
OPTIONS = {
    "layers": "--layer", "match": "--match", "all_layers": "--all", "tensors": "--tensor",
    "tensor_match": "--tensor-match", "output": "--output", "overwrite": "--overwrite",
    "gradients": "--gradients", "target": "--target", "target_output": "--target-output", "labels": "--labels",
    "x": "--input", "shard": "--shard", "resume": "--resume", "skip_bad": "--skip-bad", "size": "--size",
    "preprocess": "--preprocess", "max_bytes": "--max-bytes", "signature": "--signature",
    "custom_objects": "--custom-objects", "unsafe": "--unsafe", "batch_size": "--batch-size",
    "compression": "--compression", "dtype": "--dtype", "reduce": "--reduce",
    "allow_incomplete": "--allow-incomplete", "raw_quantized": "--raw-quantized", "save_a": "--save-a",
    "save_b": "--save-b", "pairs": "--pair", "metric": "--metric", "rtol": "--rtol", "atol": "--atol",
    "resize": "--resize", "interpolation": "--interpolation", "scale": "--scale", "offset": "--offset",
    "training": "--training", "jit": "--jit", "only": "--only", "model": "--model",
}
_speaker = ["api"]  # a process-wide setting, not a context variable: the reader and writer threads share it


@contextlib.contextmanager
def cli_words():
    """Messages raised inside name the CLI's options (the CLI runs its commands in this)."""
    _speaker.append("cli")
    try:
        yield
    finally:
        _speaker.pop()


def in_cli():
    return _speaker[-1] == "cli"


def is_argument(name):
    """Whether `name` is spelled as an argument (`layers`, `node_data`), not as what else may
    give a value: an environment variable (TENSORPROBE_SHARD), an option spelled out
    (`--filter`), a phrase (`'a.h5': shard`). Those are named as they are, and are no
    error's `argument`."""
    return name.isidentifier() and name.islower()


def name(argument):
    """How a message names the API argument `argument`: its CLI option inside `cli_words`
    (`--node-data` for an option the API lacks, `node_data`); a name that is no argument's
    (is_argument) is itself."""
    if not (in_cli() and is_argument(argument)):
        return argument
    return OPTIONS.get(argument, f"--{argument.replace('_', '-')}")


def words(cli, api):
    """The phrase `cli` while a CLI command runs, else `api` (syntax that differs: `--input
    NAME=PATH` against `x={input name: array or path}`)."""
    return cli if in_cli() else api


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


class NonFiniteError(TensorprobeError):
    """A NaN or Inf in a value recorded while a model trains (ProbeCallback with
    on_nonfinite="raise")."""
