""".npy files, .npz members and .npy on standard input: the header first, then rows read a
slice at a time.

Rows are read with plain reads, never through a memory map: pages of a map that stay mapped
count in the process's resident memory, so mapping a large file grows the process as it is
read. (An array stored in Fortran order has no contiguous rows; a .npy file of that kind is
mapped for each slice and unmapped at once, and one inside an .npz or on stdin is read whole.)
The header is parsed with NumPy's own reader, and an array of Python objects is refused from
the header alone: nothing is ever unpickled.
"""

import math
import os
import tokenize
import zipfile
import zlib

import numpy as np

from tensorprobe.errors import InputError
from tensorprobe import limits
from tensorprobe.inputs.sources import STDIN_LABEL
from tensorprobe.text import shape_text


class ArrayFile:
    """One stored array: `label` (its path, as /inputs/source records it), `key` (the member
    of an .npz, else None), `shape`, `dtype`.

    `reader()` returns an object whose `read(count, rows_shape)` returns the next `count` rows
    of shape `rows_shape` (the file's own dtype) and whose `close()` releases the file.
    """

    __slots__ = ("label", "key", "shape", "dtype", "fortran", "_open", "_stream")

    def __init__(self, label, shape, dtype, fortran, opener=None, stream=None, key=None):
        self.label, self.shape, self.dtype, self.fortran = label, shape, dtype, fortran
        self._open, self._stream, self.key = opener, stream, key

    @property
    def name(self):
        """How errors name it: the path, and the key of an .npz member."""
        return self.label if self.key is None else f"{self.label} (array '{self.key}')"

    def reader(self):
        if self._stream is not None:  # standard input: read once, in order
            stream, self._stream = self._stream, None
            return _StreamReader(self, stream, owned=False)
        return self._open(self)


def open_npy(path):
    """The header of the .npy file at `path`; the file is closed again until it is read."""
    try:
        with limits.open_regular(path) as f:
            shape, fortran, dtype = read_header(f, path)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    limits.check_array(path, shape, dtype)
    _check_size(path, shape, dtype, size - offset)

    def opener(array):
        if array.fortran:
            return _MapReader(array, path)
        f = limits.open_regular(path)
        f.seek(offset)
        return _StreamReader(array, f, owned=True)

    return ArrayFile(path, shape, dtype, fortran, opener=opener)


def in_memory(values, label):
    """An array in memory (the Python API's input), read like a file's rows: numbers, or
    text for a string input (str or bytes arrays; a list of str, or an array of objects that
    are all str or all bytes, stays one of objects so that no string is cut or padded)."""
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, (str, bytes)) for v in values):
        values = np.array(values, dtype=object)
    array = np.asarray(values)
    if array.dtype.kind == "O":
        _check_strings(array, label)
    elif array.dtype.kind not in "biufUS":
        raise InputError(f"{label}: dtype {array.dtype} is neither numbers nor text")
    return ArrayFile(label, array.shape, array.dtype, False, opener=lambda a: _MemoryReader(array))


def _check_strings(array, label):
    """An array of Python objects is taken only when they are all str or all bytes."""
    items = array.reshape(-1)
    if not (all(isinstance(v, str) for v in items) or all(isinstance(v, bytes) for v in items)):
        kinds = ", ".join(sorted({type(v).__name__ for v in items}))
        raise InputError(f"{label}: an array of Python objects ({kinds}) is taken only when they are all "
                         "str or all bytes, for a string input")


class _MemoryReader:
    def __init__(self, array):
        self.array, self.row = array, 0

    def read(self, count, rows_shape):
        rows = _rows(self.array, self.row, count, rows_shape)
        self.row += count
        return np.ascontiguousarray(rows)

    def skip(self, count, rows_shape):
        self.row += count

    def close(self):
        pass


def open_stdin(stream):
    """The .npy on standard input (a binary stream); its rows are then read once, in order."""
    shape, fortran, dtype = read_header(stream, STDIN_LABEL)
    limits.check_array(STDIN_LABEL, shape, dtype)
    return ArrayFile(STDIN_LABEL, shape, dtype, fortran, stream=stream)


def open_npz(path):
    """{key: ArrayFile} for every array in the .npz at `path` (keys without `.npy`)."""
    try:
        with limits.open_regular(path) as f, zipfile.ZipFile(f) as z:
            archive_size = os.fstat(f.fileno()).st_size
            limits.check_zip(path, z, archive_size)
            arrays = {}
            for info in z.infolist():
                if info.is_dir():
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                label = f"{path} (array '{key}')"
                _check_member(label, info, archive_size)
                with z.open(info) as member:
                    shape, fortran, dtype = read_header(member, label)
                    header_size = member.tell()
                limits.check_array(label, shape, dtype)
                _check_size(label, shape, dtype, info.file_size - header_size)
                arrays[key] = ArrayFile(path, shape, dtype, fortran, key=key,
                                        opener=_npz_opener(path, info.filename))
    except (zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from e
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as e:
        raise InputError(f"{path}: not a readable .npz file ({getattr(e, 'strerror', None) or e})") from e
    if not arrays:
        raise InputError(f"{path}: the .npz file holds no array")
    return arrays


def _check_member(label, info, archive_size):
    """A member's sizes as the zip directory declares them, against the archive: its
    compressed bytes must lie in the file and a stored member holds what it declares (what
    they may inflate to is limits.check_zip's; reading then stops at the declared size, and
    zipfile checks the CRC)."""
    if info.compress_size > archive_size:
        raise InputError(f"{label}: not a readable .npz file (the member declares {info.compress_size:,} "
                         f"compressed bytes, the file holds {archive_size:,})")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise InputError(f"{label}: not a readable .npz file (a stored member declares {info.file_size:,} "
                         f"bytes in {info.compress_size:,})")


def _npz_opener(path, member_name):
    def opener(array):
        f = limits.open_regular(path)
        try:
            z = zipfile.ZipFile(f)
        except (OSError, zipfile.BadZipFile) as e:
            f.close()
            raise InputError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
        try:
            member = z.open(member_name)
            read_header(member, array.name)
        except KeyError as e:  # the file changed since its header was checked
            z.close()
            f.close()
            raise InputError(f"{array.name}: no longer in the file") from e
        except BaseException:
            z.close()
            f.close()
            raise
        return _StreamReader(array, member, owned=True, also_close=(z, f))

    return opener


def read_header(stream, label):
    """(shape, fortran_order, dtype) from a .npy header, refusing Python objects."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InputError(f"{label}: .npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, EOFError, SyntaxError, tokenize.TokenError) as e:  # a damaged header
        raise InputError(f"{label}: not a readable .npy file ({e})") from e
    except (OSError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{label}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    if dtype.hasobject:
        raise InputError(f"{label}: holds Python objects, which are never unpickled")
    if any(d < 0 for d in shape):  # NumPy's reader takes any int; np.save never writes one
        raise InputError(f"{label}: not a readable .npy file (its header declares the shape "
                         f"{shape_text(shape)}, with a negative dimension)")
    return tuple(shape), fortran, dtype


def _check_size(label, shape, dtype, data_bytes):
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot wrap around
    if data_bytes < expected:
        raise InputError(
            f"{label}: truncated: an array of shape {tuple(shape)} {dtype} needs {expected} bytes "
            f"of data, the file holds {max(data_bytes, 0)}"
        )


class _StreamReader:
    """Rows read in order from a binary stream positioned after the header."""

    def __init__(self, array, stream, owned, also_close=()):
        self.array, self.stream, self.owned, self.also_close = array, stream, owned, also_close
        self.whole = None  # a Fortran-order array, read whole on first use
        self.row = 0

    def read(self, count, rows_shape):
        array = self.array
        if array.fortran:
            if self.whole is None:
                data = self._read_bytes(int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize)
                self.whole = np.frombuffer(data, array.dtype).reshape(array.shape, order="F")
            rows = _rows(self.whole, self.row, count, rows_shape)
            self.row += count
            return rows
        row_items = int(np.prod(rows_shape, dtype=np.int64))
        data = self._read_bytes(count * row_items * array.dtype.itemsize)
        return np.frombuffer(data, array.dtype).reshape((count, *rows_shape))

    def skip(self, count, rows_shape):
        """Pass over `count` rows: a seek where the stream allows one, else read and drop."""
        if self.array.fortran:
            self.row += count
            return
        size = count * int(np.prod(rows_shape, dtype=np.int64)) * self.array.dtype.itemsize
        try:
            seekable = self.stream.seekable()
        except (OSError, ValueError):
            seekable = False
        if seekable:
            try:
                self.stream.seek(size, 1)
                return
            except (OSError, ValueError) as e:
                raise InputError(f"{self.array.name}: seek failed ({getattr(e, 'strerror', None) or e})") from e
        while size:
            size -= len(self._read_bytes(min(size, 1 << 24)))

    def _read_bytes(self, size):
        chunks, have = [], 0
        try:
            while have < size:
                chunk = self.stream.read(size - have)
                if not chunk:
                    break
                chunks.append(chunk)
                have += len(chunk)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise InputError(f"{self.array.name}: read failed ({getattr(e, 'strerror', None) or e})") from e
        if have < size:
            raise InputError(f"{self.array.name}: truncated: the data ends early")
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def close(self):
        if self.owned:
            self.stream.close()
        for other in self.also_close:
            other.close()


class _MapReader:
    """Rows of a Fortran-order .npy file: mapped for each slice, copied, unmapped."""

    def __init__(self, array, path):
        self.array, self.path = array, path
        self.row = 0

    def read(self, count, rows_shape):
        try:
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{self.path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
        rows = np.array(_rows(mapped, self.row, count, rows_shape), order="C")
        del mapped  # the last reference: the map is closed and its pages leave the process
        self.row += count
        return rows

    def skip(self, count, rows_shape):
        self.row += count

    def close(self):
        pass


def _rows(array, start, count, rows_shape):
    """Rows [start, start + count) of `array`, whose rows have `rows_shape`: the array itself
    as one row when it holds a single sample."""
    if tuple(rows_shape) == tuple(array.shape):
        return array[np.newaxis]
    return array[start : start + count]
