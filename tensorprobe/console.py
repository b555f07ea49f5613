"""Where output goes: `out` for data (stdout), `err` for people (stderr).

Both consoles look up sys.stdout/sys.stderr when they write, so a test runner that swaps
the streams, or `quiet_native_stderr` below, is honoured.
"""

import contextlib
import io
import logging
import os
import sys
import warnings

from rich.console import Console
from rich.text import Text

from tensorprobe.text import printable


def escaped(value, keep_newlines=False):
    """A str or rich Text with its control characters shown escaped (text.printable), styles
    kept; anything else (a table, a rule) as it is."""
    if isinstance(value, str):
        return printable(value, keep_newlines)
    if isinstance(value, Text) and printable(value.plain, keep_newlines) != value.plain:
        pieces = value.divide(range(1, len(value.plain)))  # one piece a character, spans kept
        for piece in pieces:
            piece.plain = printable(piece.plain, keep_newlines)
        return Text("").join(pieces)
    return value


class SafeConsole(Console):
    """A console that writes no control character but the line breaks it was handed: a layer
    name, a dump attribute or a file name holding ESC[31m is shown escaped and cannot colour
    or clear the terminal. Values read from files that could hold a newline are escaped
    where the line is made (report.py: table cells, provenance, footers; the `error:` line
    joins its lines), so they cannot start a line of their own."""

    def print(self, *objects, **kwargs):
        super().print(*(escaped(o, keep_newlines=True) for o in objects), **kwargs)


# soft_wrap: rich never breaks a line of text (a path, a message) itself. In a pipe or a log a
# line stays whole; at a terminal, the terminal wraps it. Tables are laid out by
# report.print_table.
out = SafeConsole(soft_wrap=True)
err = SafeConsole(stderr=True, soft_wrap=True)

# TensorFlow's C++ runtime reads this when it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def quiet_native_stderr(enabled=True):
    """Keep TensorFlow's start-up and runtime log lines (oneDNN, CUDA, absl, Python warnings)
    away from the user.

    TensorFlow writes some of them from C++ straight to file descriptor 2, whatever
    TF_CPP_MIN_LOG_LEVEL says, so fd 2 points at /dev/null while the block runs. Python's
    sys.stderr is re-opened on a copy of the real stderr, so tensorprobe's own messages
    still reach the user.
    """
    if not enabled:
        yield
        return
    try:
        stderr_is_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        stderr_is_fd2 = False
    sys.stderr.flush()
    saved_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    saved_stream = sys.stderr
    if stderr_is_fd2:
        sys.stderr = io.TextIOWrapper(
            os.fdopen(os.dup(saved_fd), "wb", buffering=0),
            encoding=saved_stream.encoding,
            errors="backslashreplace",
            line_buffering=True,
        )
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl", "h5py")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if stderr_is_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = saved_stream
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
