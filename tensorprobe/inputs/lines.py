"""Text samples for string inputs: `.txt` files (one sample a line) and Python lists of str.

A `.txt` file is UTF-8, one sample per line, read a batch of lines at a time:
- lines end at "\\n"; a "\\r" just before it is dropped too, so a file written with CRLF
  line ends gives the same samples. Other characters (a lone "\\r", form feeds, U+2028) are
  part of the sample: no other character ends a line.
- a newline at the end of the file ends the last line; it does not add an empty sample.
- empty lines are samples (the empty string): a file's line K stays sample K, in step with
  labels or other inputs kept line by line.
- a UTF-8 byte order mark at the start is not part of the first sample.
- bytes that are not UTF-8 are an error naming the file and the line.
Samples reach the model as Python str (TensorFlow encodes them as UTF-8), in an array of
objects made here, never read from a file: no pickle is involved.
"""

import os

import numpy as np

from tensorprobe.errors import InputError
from tensorprobe import limits
from tensorprobe.inputs.npy import ArrayFile

BOM = b"\xef\xbb\xbf"
TEXT_DTYPE = np.dtype("U")  # what a text file declares: str, of any length
COUNT_BLOCK = 1 << 20


def open_text(path, sample_shape):
    """An ArrayFile over the lines of the text file at `path`, one sample of `sample_shape`
    (() or (1,)) each. The lines are counted now; they are read when the rows are."""
    try:
        with limits.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size  # one array of text: no line can be longer
            limits.ARRAY_BYTES.check(size, f"{path}: the text file holds {size:,} bytes")
            start = len(BOM) if f.read(len(BOM)) == BOM else 0
            f.seek(start)
            rows = _count_lines(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    if not rows:
        raise InputError(f"{path}: the text file is empty: it holds no line, so no sample")

    def opener(array):
        f = limits.open_regular(path)
        f.seek(start)
        return _LineReader(path, f)

    return ArrayFile(path, (rows, *sample_shape), TEXT_DTYPE, False, opener=opener)


def _count_lines(f):
    """Lines from the stream's position to its end: newlines, plus one for a last line
    without one."""
    count, last = 0, b"\n"
    while True:
        block = f.read(COUNT_BLOCK)
        if not block:
            break
        count += block.count(b"\n")
        last = block[-1:]
    return count + (last != b"\n")


class _LineReader:
    """Rows of a text file in order: `read(count, rows_shape)` -> an object array of str."""

    def __init__(self, path, f):
        self.path, self.f = path, f
        self.line = 0  # lines read so far

    def read(self, count, rows_shape):
        values = np.empty(count, dtype=object)
        for i in range(count):
            values[i] = self._next()
        return values.reshape((count, *rows_shape))

    def skip(self, count, rows_shape):
        for _ in range(count):
            self._raw()

    def _raw(self):
        try:
            data = self.f.readline()
        except OSError as e:
            raise InputError(f"{self.path}: read failed ({e.strerror or e})") from e
        self.line += 1
        if not data:
            raise InputError(f"{self.path}: the file changed while it was read: line {self.line} is gone")
        return data

    def _next(self):
        data = self._raw()
        if data.endswith(b"\n"):
            data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{self.path}: line {self.line} is not UTF-8 text ({e.reason} at byte "
                             f"{e.start})") from e

    def close(self):
        self.f.close()


class StrList(list):
    """A list of str given to the Python API (never by the command line, whose arguments are
    paths): text samples for a model whose one input takes strings, else paths."""


def from_api(x):
    """The Python API's `x`, with a list or tuple of str marked as a StrList."""
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, str) for v in x):
        return StrList(x)
    return x
