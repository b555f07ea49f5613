"""The HDF5 dump layout: create it, append batch by batch, finish atomically; read it back.

The layout (format_version 1: root attributes, /inputs/source, /inputs/skipped, /activations,
/gradients, /tensors, dataset attributes, naming rules) is specified once, in docs/hdf5-layout.md;
a change here is a change there, and one that a reader of format_version 1 cannot read raises
FORMAT_VERSION. Of its root attributes, input_contents comes from shard.py, data_sha256 from
ContentDigest, and merged_rows, merged_sha256, merged_size, merged_mtime_ns are checked by
check_shards.

Every dataset of a data group and /inputs/source hold one row per sample. DumpWriter checks
it, and that those are all the rows the job was to write, before it marks a file complete;
reading (`summary`, `diff`, `plot`) goes through open_dump, which refuses anything but a
complete dump in a format this version reads whose datasets agree in rows and hold its job's
rows, and a merged dump whose shards are no longer the files merged, with one DumpReadError
naming the file.
"""

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tensorprobe import errors, limits
from tensorprobe.errors import (
    DumpReadError,
    IncompleteDumpError,
    OutputExistsError,
    TensorprobeError,
    UsageError,
    WriteError,
)
from tensorprobe.shard import JOB, RESUME, ROW_SUFFIX
from tensorprobe.stats import RunningStats

FORMAT = "tensorprobe"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # aim for about 1 MiB per chunk
SPACE_MARGIN = 4 << 20  # room kept free for HDF5's own metadata when the data is written
# Every numeric dataset a dump writes (DumpWriter, merge --copy) carries HDF5's Fletcher-32
# filter: a checksum per chunk, which HDF5 verifies on every read, so a bit flipped on disk or
# in transfer is an error (CheckedDataset names the file and dataset) rather than a wrong
# number. HDF5 allows no filter on variable-length strings (/inputs/source, /inputs/skipped,
# string layers): those are stored without one.
CHECKSUM = True
_damaged = False  # HDF5 failed to write and could not close a file cleanly: see hdf5_damaged()


def hdf5_damaged():
    """Whether a failed write left the HDF5 library holding a file it cannot close. The
    library then crashes when the process exits normally; the CLI ends such a process
    with os._exit after reporting the error."""
    return _damaged


def check_room(output, needed_bytes, max_bytes=None, argument="output"):
    """Refuse a dump that cannot fit: more than --max-bytes, or than the free space. `argument`:
    the API argument that names `output` (errors.name: --output in the CLI), in messages."""
    if max_bytes is not None and needed_bytes > max_bytes:
        raise UsageError(
            f"{errors.name(argument)} '{output}': the dump needs about {mib(needed_bytes)}, more than "
            f"{errors.name('max_bytes')} {mib(max_bytes)}", argument="max_bytes"
        )
    free = free_bytes(output, argument)
    if needed_bytes + SPACE_MARGIN > free:
        raise WriteError(
            f"{errors.name(argument)} '{output}': the dump needs about {mib(needed_bytes)} but only {mib(free)} "
            "are free", argument=argument
        )
    return free


def free_bytes(output, argument="output"):
    """The free space in `output`'s folder; a folder that is gone (removed while a dump runs)
    or cannot be asked is a WriteError naming it."""
    folder = Path(output).parent
    try:
        return shutil.disk_usage(folder).free
    except OSError as e:
        gone = isinstance(e, FileNotFoundError)
        why = "no longer exists (removed while the dump ran?)" if gone else f"cannot be read ({e.strerror or e})"
        raise WriteError(f"{errors.name(argument)} '{output}': its folder '{folder}' {why}",
                         argument=argument) from e


def mib(n):
    return f"{n / (1 << 20):,.1f} MiB"


# What a dump takes on disk, besides its datasets' rows (measured with h5py 3 / HDF5 1.14 on
# dumps of 7 to 20,000 rows, 1 to 200 datasets, batches of 1 to 32 rows; see dump_bytes).
FILE_METADATA = 64 << 10  # the superblock, root group and attributes, /inputs
DATASET_METADATA = 5 << 10  # a dataset's object header and its scalar attributes
CHANNEL_METADATA = 40  # per channel: the channel_* statistics attributes (float64 each)
CHUNK_METADATA = 64  # per chunk: its entry in the chunk index
SOURCE_ROW_METADATA = 24  # per /inputs/source row: its global-heap object header, alignment
BATCH_METADATA = 48  # per batch written: a global-heap collection's header, index nodes
SOURCE_CHUNK_ROWS = 1024


def dump_bytes(datasets, rows, batch_rows, source_bytes):
    """An upper bound of the size of a dump file (uncompressed) of `rows` rows written
    `batch_rows` at a time: its datasets (datasets_bytes), /inputs/source, whose rows hold
    `source_bytes` UTF-8 bytes in all, and HDF5's own metadata. Measured never below the real
    size and at most 35 % plus FILE_METADATA above it (under 10 % but for batches of one row
    or thousands of channels); compressed datasets take less than this says."""
    batch_rows = max(1, min(batch_rows, rows))
    total = FILE_METADATA + -(-rows // batch_rows) * BATCH_METADATA
    total += -(-rows // SOURCE_CHUNK_ROWS) * SOURCE_CHUNK_ROWS * 16 + rows * SOURCE_ROW_METADATA + source_bytes
    return total + datasets_bytes(datasets, rows, batch_rows)


def datasets_bytes(datasets, rows, batch_rows):
    """What datasets of `rows` rows written `batch_rows` at a time take (`datasets`: (bytes of
    one row, channels) each): their whole chunks (HDF5 stores the last one whole), the chunk
    index and the attributes."""
    total = 0
    batch_rows = max(1, min(batch_rows, rows))
    for row_bytes, channels in datasets:
        per_chunk = chunk_rows(row_bytes, batch_rows)
        chunks = -(-rows // per_chunk)
        total += chunks * (per_chunk * row_bytes + CHUNK_METADATA) + DATASET_METADATA + channels * CHANNEL_METADATA
    return total


def chunk_rows(row_bytes, first_rows):
    """The rows of a dataset's chunks: about CHUNK_BYTES, at most the first batch's rows."""
    return max(1, min(CHUNK_BYTES // max(1, row_bytes), max(1, first_rows)))


STAT_KEYS = ("min", "max", "mean", "std", "zeros_fraction", "nan_count", "inf_count")


# Suffixes of files that are not HDF5: an output named so would be an HDF5 file in disguise.
OTHER_FORMATS = {
    ".npy": "NumPy", ".npz": "NumPy", ".json": "JSON", ".jsonl": "JSON lines", ".csv": "CSV", ".tsv": "TSV",
    ".txt": "text", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF",
    ".tiff": "TIFF", ".webp": "WebP", ".svg": "SVG", ".pdf": "PDF", ".keras": "Keras", ".tflite": "TFLite",
    ".pb": "protobuf", ".onnx": "ONNX", ".pt": "PyTorch", ".pth": "PyTorch", ".safetensors": "safetensors",
    ".ckpt": "checkpoint", ".pkl": "pickle", ".pickle": "pickle", ".parquet": "Parquet", ".zip": "zip",
    ".gz": "gzip", ".tar": "tar", ".py": "Python",
}


def check_hdf5_name(path, argument="output"):
    """Refuse an HDF5 output named like another format's file (acts.npy), for the CLI's
    --output/--save-a/--save-b and the API's `output`/`save_a`/`save_b` alike."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix in OTHER_FORMATS:
        raise UsageError(f"{errors.name(argument)} '{os.fspath(path)}': the output is an HDF5 file, not "
                         f"{OTHER_FORMATS[suffix]} ({suffix}); name it .h5 or .hdf5", argument=argument)


def check_output(path, overwrite, argument="output"):
    """Fail early, before any work, when `path` cannot be the output of a dump. A symbolic
    link counts as an existing output, dangling or not: --overwrite replaces the link itself
    (never the file it points to). `argument`: the API argument that names `path` (`output`,
    `save_a`, `plot`, ...: errors.name), in messages."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{errors.name(argument)} '{path}' is a folder; give a file name", argument=argument)
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{errors.name(argument)} '{path}' {_existing(path)}; pass "
                                f"{errors.name('overwrite')} to replace it", argument=argument)
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{errors.name(argument)} '{path}': folder '{parent}' does not exist", argument=argument)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{errors.name(argument)} '{path}': folder '{parent}' is not writable", argument=argument)


def _existing(path):
    if not path.is_symlink():
        return "exists"
    target = os.readlink(path)
    return f"is a symbolic link to '{target}'{'' if path.exists() else ', which does not exist'} (it would be " \
        "replaced by the new file)"


# ---- partial files: `.NAME.PID@HOST.<random>.partial` beside the output ----------------------

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def partial_path(output):
    """A new, empty file beside `output` under a hidden temporary name that names its writer
    (`.NAME.PID@HOST.*.partial`), to write to and then `move_into_place`. It gets the
    permissions a new file would (mkstemp makes it private). Partial files of `output` left
    by writers of this host that no longer run (a dump killed with SIGKILL) are removed
    first."""
    output = Path(output)
    remove_stale_partials(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.{os.getpid()}@{_HOST}.", suffix=".partial",
                               dir=output.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def remove_stale_partials(output):
    """Delete the partial files of `output` whose writer, a process of this host, no longer
    runs; return their paths. A partial file of another host, of a process still running
    (or of a pid reused since: kept, to be safe), or named before writers were recorded is
    left alone."""
    output = Path(output)
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(\d+)@([A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.partial")
    removed = []
    try:
        names = os.listdir(output.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or m.group(2) != _HOST or _running(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(output.parent / name)
            removed.append(output.parent / name)
    return removed


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- the commit: renaming a finished file into place -------------------------------------------

_stop = None  # the interrupt (KeyboardInterrupt or errors.Terminated) the CLI was sent, if any
_commits = {}  # output path -> (device, inode) of the file renamed (or about to be) to it


def request_stop(kind):
    """Remember that the process was told to stop: the CLI's SIGINT/SIGTERM handlers call this
    with the exception they raise. No output is moved into place after that, even where Python
    dropped the exception itself (raised inside a finaliser), and a dump stops at its next
    batch."""
    global _stop
    _stop = kind


def new_run():
    """Forget the interrupts and outputs of a previous command (the CLI calls it first)."""
    request_stop(None)
    _commits.clear()


def stop_if_requested():
    if _stop is not None:
        raise _stop()


def move_into_place(tmp, output, overwrite, argument="output"):
    """Rename the finished `tmp` to `output` (atomic within a folder): the moment a run has
    succeeded, which `completed(output)` tells afterwards, even after an interrupt that came
    just then. Refuses an output that appeared meanwhile unless `overwrite`, and raises the
    interrupt instead when one was requested: `output` then stays as it was."""
    if os.path.lexists(output) and not overwrite:
        raise OutputExistsError(f"{errors.name(argument)} '{output}' {_existing(Path(output))}; pass "
                                f"{errors.name('overwrite')} to replace it", argument=argument)
    _commits[os.path.abspath(output)] = _identity(tmp)
    stop_if_requested()
    os.replace(tmp, output)


def completed_any():
    """Whether an output of this run is in place already (the run has succeeded)."""
    return any(completed(output) for output in list(_commits))


def completed(output):
    """Whether `output` is the file this process moved into place there: after an interrupt,
    whether the run had already succeeded."""
    identity = _commits.get(os.path.abspath(output))
    try:
        return identity is not None and _identity(output) == identity
    except OSError:
        return False


def _identity(path):
    info = os.stat(path, follow_symlinks=False)
    return info.st_dev, info.st_ino


@contextlib.contextmanager
def atomic_output(output, overwrite, argument="output"):
    """Yield a temporary path to write the whole output to; on success move it to `output`,
    on any failure (or Ctrl-C) before that delete it, so `output` is never half-written and a
    file that was there survives a failure. An OSError inside the block is reported as a
    failed write of `output`, so the block should only write. For outputs written in one go
    (pictures, merged dumps); DumpWriter does the same for dumps written batch by batch."""
    check_output(output, overwrite, argument)
    tmp = partial_path(output)
    try:
        yield tmp
        move_into_place(tmp, output, overwrite, argument)
    except OSError as e:
        raise WriteError(f"{errors.name(argument)} '{output}': write failed: {_write_reason(e)}",
                         argument=argument) from e
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class DatasetSpec:
    """Where one computed output goes, and what it is."""

    name: str  # path under `group`
    layer: str  # the layer's path
    layer_class: str
    extra: dict  # further attributes (call, output, target)
    group: str = "activations"  # or "gradients"


STRING = h5py.string_dtype("utf-8")  # how string values are stored: variable-length UTF-8
VLEN_BYTES = 16  # what one variable-length string takes in its dataset's chunks (its heap reference)


def is_string(dtype):
    """Whether a dataset's or array's dtype holds strings (a variable-length HDF5 string, or
    NumPy's bytes, str and object arrays, as TensorFlow's string tensors give them)."""
    return h5py.check_string_dtype(dtype) is not None or np.dtype(dtype).kind in "OSU"


def stored_strings(array, spec):
    """`array` as the writer stores it: unchanged unless it holds strings, then an object
    array of bytes and str (HDF5 variable-length UTF-8 strings; TensorFlow's bytes are
    stored as they are). An object array of anything else (a ragged value's rows) has no
    HDF5 form: a TensorprobeError naming the layer, never a value stored as something else."""
    if array.dtype.kind not in "OSU":
        return array
    if array.dtype.kind in "SU":
        return array.astype(object)
    odd = next((v for v in array.reshape(-1) if not isinstance(v, (bytes, str))), None)
    if odd is not None:
        raise TensorprobeError(f"layer '{spec.layer}' returned values of type {type(odd).__name__} "
                               "(a ragged or nested value), which have no fixed shape to store")
    return array


def _row_bytes(array):
    """What one row of `array` takes in a dataset: its bytes, or for strings their references
    plus the mean UTF-8 length of a row."""
    if not is_string(array.dtype):
        return array[:1].nbytes
    elements = int(np.prod(array.shape[1:], dtype=np.int64))
    text = sum(len(v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape"))
               for v in array.reshape(-1))
    return elements * VLEN_BYTES + -(-text // max(1, len(array)))


def dataset_name(group, path):
    """How a dataset is named to people and in `summary --json`: its path for activations,
    `gradients/<path>` and `tensors/<name>` for the others."""
    return path if group == "activations" else f"{group}/{path}"


class MemorySink:
    """DumpWriter's counterpart in memory, for the Python API's `activations`: the same
    `append`/`skip` calls; `finish()` checks every row the same way and returns
    {dataset name: array}."""

    def __init__(self, specs, *, rows):
        self.specs = specs
        self.expected_rows = rows
        self.parts = [[] for _ in specs]
        self.rows = 0
        self.skipped_rows = 0

    def append(self, sources, arrays):
        n = len(sources)
        for spec, part, array in zip(self.specs, self.parts, arrays):
            if array.shape[0] != n:
                raise TensorprobeError(f"layer '{spec.layer}' returned {array.shape[0]} rows for a batch of {n}")
            part.append(array)
        self.rows += n

    def skip(self, entries, rows):
        self.skipped_rows += rows

    def finish(self):
        expected = self.expected_rows - self.skipped_rows
        values = {}
        for spec, part in zip(self.specs, self.parts):
            array = np.concatenate(part) if part else np.empty((0,))
            if array.shape[0] != expected or self.rows != expected:
                raise TensorprobeError(f"{dataset_name(spec.group, spec.name)} holds {array.shape[0]} rows, "
                                       f"expected {expected}")
            values[dataset_name(spec.group, spec.name)] = array
        return values


class DumpWriter:
    """Write a dump under a temporary name in the output's folder; rename it into place on
    `finish()`. Leaving the `with` block without `finish()` (an error, Ctrl-C) deletes it, so
    nothing ever appears at the output path half-written and a file that was there survives.

    `rows` is the number of input rows the job covers (a shard's: its range); `finish()` marks
    the file complete only when every dataset and /inputs/source hold exactly those rows but
    the ones skipped as bad, and stores the digest of what it wrote (`data_sha256`, see
    ContentDigest). Once the first batch gives every dataset's shape, the whole dump's size
    (dump_bytes, with `source_bytes` for /inputs/source) is checked against `max_bytes` and the
    free space, so a limit holds whatever the model's shapes."""

    def __init__(self, output, specs, attrs, overwrite=False, compression=(None, None), *, rows,
                 max_bytes=None, source_bytes=0, batch_rows=None, argument="output"):
        self.output = Path(output)
        self.argument = argument  # what names the output in messages: output, save_a, save_b (errors.name)
        self.specs = specs
        self.overwrite = overwrite
        self.compression = compression  # (h5py filter name or None, its options)
        self.expected_rows = rows
        self.max_bytes = max_bytes
        self.source_bytes = source_bytes
        self.batch_rows = batch_rows
        check_output(self.output, overwrite, argument)
        self.tmp = partial_path(self.output)
        self.rows = 0
        self.skipped_rows = 0
        self.stats = [RunningStats() for _ in specs]
        self.datasets = [None] * len(specs)
        self.digest = ContentDigest()
        try:
            self.file = h5py.File(self.tmp, "w")
            for key, value in attrs.items():
                self.file.attrs[key] = value
            self.file.attrs["format"] = FORMAT
            self.file.attrs["format_version"] = FORMAT_VERSION
            self.file.attrs["complete"] = False
            self.file.create_group("activations")
            self.sources = self.file.create_dataset(
                "inputs/source", shape=(0,), maxshape=(None,), chunks=(1024,),
                dtype=h5py.string_dtype("utf-8"),
            )
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()

    def _failed(self, reason):
        """The WriteError of this output: `--output 'acts.h5': <reason>` (errors.name)."""
        return WriteError(f"{errors.name(self.argument)} '{self.output}': {reason}", argument=self.argument)

    def append(self, sources, arrays):
        """Append one batch: its row sources and one array per spec, first axis the batch."""
        stop_if_requested()
        n = len(sources)
        start, stop = self.rows, self.rows + n
        if start == 0:
            self._check_size(n, arrays)
        needed = sum(a.nbytes for a in arrays) + SPACE_MARGIN
        free = free_bytes(self.output, self.argument)
        if free < needed:  # fail before HDF5 does: a failed HDF5 write cannot be cleaned up
            raise self._failed(f"no space left on the device ({mib(free)} free, the next batch needs {mib(needed)})")
        try:
            self.sources.resize((stop,))
            self.sources[start:stop] = sources
            self.digest.strings(f"/{INPUTS}/source", sources)
            for i, (spec, array) in enumerate(zip(self.specs, arrays)):
                if array.shape[0] != n:
                    raise TensorprobeError(
                        f"layer '{spec.layer}' returned {array.shape[0]} rows for a batch of {n}"
                    )
                array = stored_strings(array, spec)
                ds = self.datasets[i] or self._create(i, array)
                ds.resize((stop,) + ds.shape[1:])
                ds[start:stop] = array
                self.digest.rows(ds.name, array, ds.dtype)
                if not is_string(ds.dtype):  # strings have no statistics
                    self.stats[i].update(array)
        except (OSError, RuntimeError) as e:  # h5py reports failed writes as either
            raise self._failed(f"write failed: {_write_reason(e)}") from e
        self.rows = stop

    def _check_size(self, n, arrays):
        """The whole dump's size, now that the first batch gives every dataset's shape, against
        --max-bytes and the free space: the check before the work covers only what the
        model's symbolic shapes tell (and nothing of a string's length). A string dataset's
        row counts its references (16 bytes each) and the first batch's mean UTF-8 length."""
        datasets = [(_row_bytes(a) if n else 0, a.shape[-1] if a.ndim >= 2 else 0) for a in arrays]
        needed = dump_bytes(datasets, self.expected_rows, self.batch_rows or n, self.source_bytes)
        check_room(self.output, needed, self.max_bytes, self.argument)

    def skip(self, entries, rows):
        """Record inputs passed over as bad (--skip-bad): /inputs/skipped gets one row
        [path, reason] each, and its attribute `rows` counts the `rows` sample rows they cost
        (with several inputs, a row may have an entry per input); the dataset appears with
        the first one."""
        if "inputs/skipped" not in self.file:
            self.file.create_dataset("inputs/skipped", shape=(0, 2), maxshape=(None, 2), chunks=(256, 2),
                                     dtype=h5py.string_dtype("utf-8"))
        ds = self.file["inputs/skipped"]
        start = ds.shape[0]
        try:
            ds.resize((start + len(entries), 2))
            ds[start:] = [list(entry) for entry in entries]
            ds.attrs["rows"] = self.skipped_rows + rows
        except (OSError, RuntimeError) as e:
            raise self._failed(f"write failed: {_write_reason(e)}") from e
        self.digest.strings(f"/{INPUTS}/skipped", [text for entry in entries for text in entry])
        self.skipped_rows += rows

    def _create(self, i, array):
        spec = self.specs[i]
        sample_shape = array.shape[1:]
        strings = is_string(array.dtype)
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * (VLEN_BYTES if strings else array.dtype.itemsize))
        rows_per_chunk = chunk_rows(row_bytes, array.shape[0])
        ds = self.file.require_group(spec.group).create_dataset(
            spec.name, shape=(0,) + sample_shape, maxshape=(None,) + sample_shape,
            chunks=(rows_per_chunk,) + sample_shape, dtype=STRING if strings else array.dtype,
            compression=self.compression[0], compression_opts=self.compression[1], fletcher32=CHECKSUM and not strings,
        )
        ds.attrs["layer"] = spec.layer
        ds.attrs["layer_class"] = spec.layer_class
        ds.attrs["sample_shape"] = np.asarray(sample_shape, dtype=np.int64)
        for key, value in spec.extra.items():
            ds.attrs[key] = value
        self.datasets[i] = ds
        return ds

    def finish(self):
        """Check that every row is written, write the statistics and the digest, mark the file
        complete and move it to the output path. Rows missing (or extra) delete the file and
        raise WriteError; so does an interrupt that came before the rename (see
        move_into_place)."""
        try:
            self._check_rows()
            for ds, stats in zip(self.datasets, self.stats):
                if ds is not None and not is_string(ds.dtype):
                    write_stats(ds, stats)
            self.file.attrs["samples"] = self.rows
            self.file.attrs[DIGEST] = self.digest.hexdigest(content_datasets(self.file))
            self.file.attrs["complete"] = True
            self.file.close()
            move_into_place(self.tmp, self.output, self.overwrite, self.argument)
        except (OSError, RuntimeError) as e:
            self.abort()
            raise self._failed(f"write failed: {_write_reason(e)}") from e
        except BaseException:
            self.abort()
            raise

    def _check_rows(self):
        """Every dataset and /inputs/source, as HDF5 holds them, have the rows the job was to
        write: its input rows but those skipped as bad."""
        expected = self.expected_rows - self.skipped_rows
        counts = {"/inputs/source": self.sources.shape[0]}
        for spec, ds in zip(self.specs, self.datasets):
            counts[f"/{spec.group}/{spec.name}"] = 0 if ds is None else ds.shape[0]
        wrong = [(name, n) for name, n in counts.items() if n != expected]
        if wrong:
            name, n = wrong[0]
            skipped = f", {self.skipped_rows} skipped as bad" if self.skipped_rows else ""
            raise self._failed(f"{name} holds {n} rows, expected {expected} ({self.expected_rows} input "
                               f"rows{skipped}); the dump is not kept")

    def nonfinite(self):
        """(dataset path, nan count, inf count, first sample row) for each dataset holding
        NaN or Inf."""
        return [
            (f"{spec.group}/{spec.name}", st.nan_count, st.inf_count, st.first_nonfinite_row)
            for spec, st in zip(self.specs, self.stats)
            if st.nan_count or st.inf_count
        ]

    def abort(self):
        """Delete the temporary file (see discard)."""
        discard(getattr(self, "file", None), self.tmp)


def discard(file, tmp):
    """Delete the temporary file `tmp` and close `file`, the h5py.File writing it. After a
    failed write (a full disk) HDF5 still holds unwritten data that closing would try to
    flush, and fail on again: the unlinked file is truncated first, which frees its space, so
    that the close succeeds."""
    tmp.unlink(missing_ok=True)
    if file is None or not file.id.valid:
        return
    try:
        os.ftruncate(file.id.get_vfd_handle(), 0)
    except (OSError, RuntimeError, ValueError):
        pass  # nothing to free
    try:
        file.close()
    except (OSError, RuntimeError):
        global _damaged
        _damaged = True  # the file is already deleted; nothing of it is kept


# ---- what a dump holds: its content digest -----------------------------------------------------

DIGEST = "data_sha256"
DIGEST_BLOCK = 64 << 20  # bytes read at a time by content_digest


class ContentDigest:
    """The SHA-256 of a dump's contents, `data_sha256`: one SHA-256 per dataset (/inputs/source,
    /inputs/skipped and every dataset of every data group) over its rows in order (numbers:
    their bytes in the dataset's dtype; strings: each one's UTF-8 length, 8 bytes little
    endian, then its bytes), then one over the sorted lines `path dtype shape digest`. The
    writer feeds it batch by batch (about 0.1 s per 100 MB, in the writer thread);
    `content_digest` computes it again from a file."""

    def __init__(self):
        self.parts = {}

    def rows(self, path, array, dtype):
        if h5py.check_string_dtype(dtype) is not None:
            return self.strings(path, np.asarray(array).reshape(-1).tolist())
        data = np.ascontiguousarray(array, dtype=dtype)
        self._part(path).update(data.reshape(-1).view(np.uint8) if data.size else b"")

    def strings(self, path, values):
        digest = self._part(path)
        for value in values:
            data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
            digest.update(len(data).to_bytes(8, "little") + data)

    def _part(self, path):
        return self.parts.setdefault(path, hashlib.sha256())

    def hexdigest(self, datasets):
        """The digest, once fed with all the rows of `datasets` ({path: (dtype, shape)}, as
        content_datasets gives them)."""
        lines = []
        for path, (dtype, shape) in sorted(datasets.items()):
            part = self.parts.get(path, hashlib.sha256()).hexdigest()
            lines.append(f"{path} {_dtype_text(dtype)} {','.join(map(str, shape))} {part}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def content_datasets(f):
    """{path: (dtype, shape)} of the datasets of `f` a content digest covers: /inputs/source,
    /inputs/skipped and every dataset of every data group."""
    found = {}
    for name in ("source", "skipped"):
        ds = f.get(f"{INPUTS}/{name}")
        if isinstance(ds, h5py.Dataset):
            found[ds.name] = (ds.dtype, ds.shape)
    for group in data_groups(f):
        f[group].visititems(lambda name, obj: found.__setitem__(obj.name, (obj.dtype, obj.shape))
                            if isinstance(obj, h5py.Dataset) else None)
    return found


def content_digest(f):
    """`data_sha256` computed from what the file `f` holds (reads every dataset once)."""
    digest = ContentDigest()
    datasets = content_datasets(f)
    for path in datasets:
        ds = checked(f[path])
        if ds.ndim == 0:
            digest.rows(path, ds[()], ds.dtype)
            continue
        strings = h5py.check_string_dtype(ds.dtype) is not None
        row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * (16 if strings else ds.dtype.itemsize))
        step = max(1, DIGEST_BLOCK // row_bytes)
        for start in range(0, ds.shape[0], step):
            block = ds[start : start + step]
            if strings:
                digest.strings(path, block.reshape(-1).tolist())
            else:
                digest.rows(path, block, ds.dtype)
    return digest.hexdigest(datasets)


def _dtype_text(dtype):
    return "utf-8" if h5py.check_string_dtype(dtype) is not None else np.dtype(dtype).str


def write_stats(ds, stats):
    """A RunningStats' figures as the attributes of dataset `ds`."""
    for key, value in stats.result().items():
        ds.attrs[key] = value
    if len(ds.shape) >= 2:
        for key, value in stats.channel_result().items():
            ds.attrs[key] = value
    if stats.first_nonfinite_row is not None:
        ds.attrs["first_nonfinite_sample"] = stats.first_nonfinite_row
        ds.attrs["channel_count"] = stats.count  # finite values per channel, for merge


def _write_reason(exc):
    """The useful part of an HDF5 write error ("No space left on device")."""
    text = str(exc)
    for marker in ("error message = '", "errno = "):
        if marker in text:
            start = text.index(marker) + len(marker)
            return text[start:].split("'")[0].split(",")[0]
    return text.splitlines()[0] if text else type(exc).__name__


GROUP_ORDER = ("activations", "gradients")  # data groups listed first; others follow by name
INPUTS = "inputs"


def open_dump(path, allow_incomplete=False):
    """Open a dump for reading once it is known to be one: HDF5, written by tensorprobe in a
    format this version reads, and complete unless `allow_incomplete`. Returns an open
    h5py.File; anything else raises DumpReadError with a message naming `path`."""
    from tensorprobe import trainfile

    limits.check_regular(path, f"'{path}'", "a dump is an HDF5 file", DumpReadError)
    try:
        f = trainfile.open_with_retry(path, "r")  # a training file is written between reads
    except OSError as e:
        if not _is_hdf5(path):
            raise DumpReadError(f"'{path}' is not an HDF5 file") from e
        raise DumpReadError(f"'{path}' is a damaged or truncated HDF5 file ({_one_line(e)})") from e
    try:
        with reading(path):
            _check_dump(f, path, allow_incomplete)
    except BaseException:
        f.close()
        raise
    return f


@contextlib.contextmanager
def reading(path, dataset=None):
    """Turn the errors h5py raises on a damaged file (HDF5 errors surface as OSError, or as
    KeyError/RuntimeError for broken object headers and links) into one DumpReadError that
    names the file, and the dataset being read when `dataset` (an h5py dataset) is given: a
    chunk that fails its Fletcher-32 checksum is said to be one. Only wraps reads, so a bug
    elsewhere still shows as itself."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as e:
        if dataset is not None and _filter_failed(e):
            raise DumpReadError(checksum_message(path, dataset)) from e
        where = f"dataset {dataset.name}: " if dataset is not None else ""
        raise DumpReadError(f"'{path}' is a damaged or truncated dump ({where}{_one_line(e)})") from e


def _filter_failed(e):
    """Whether h5py's error is a chunk's filter failing as it is read: HDF5 reports a
    Fletcher-32 mismatch as "filter returned failure during read"."""
    return isinstance(e, OSError) and "filter returned failure" in str(e)


def checksum_message(path, ds):
    """The error of a chunk of `ds` that fails its checksum (or, without one, to decompress):
    for a virtual merged dataset, the shard holding it is named, found by reading each shard's
    dataset until one fails."""
    if ds.is_virtual:
        for source in ds.virtual_sources():
            shard = Path(path).parent / source.file_name
            with contextlib.suppress(OSError), h5py.File(shard, "r") as f:
                part = f[source.dset_name]
                try:
                    for key, _ in element_blocks(part, DIGEST_BLOCK // max(1, part.dtype.itemsize)):
                        part[key]
                except OSError as e:
                    if _filter_failed(e):
                        return (f"'{path}': dataset {ds.name} reads shard '{source.file_name}', whose dataset "
                                f"{part.name} {_fails(part)}")
        return f"'{path}': dataset {ds.name} reads a shard chunk that fails to read (a damaged shard)"
    return f"'{path}': dataset {ds.name} {_fails(ds)}"


def _fails(ds):
    if ds.fletcher32:
        return ("fails its Fletcher-32 checksum: a chunk changed after it was written (a damaged disk or "
                "copy); its values cannot be trusted")
    return "has a chunk that fails to decompress: the file was damaged after it was written"


class CheckedDataset(h5py.Dataset):
    """An h5py dataset of a dump whose reads (`ds[key]`, `ds.asstr()[key]`, `np.asarray(ds)`,
    read_direct) turn HDF5 errors into one DumpReadError naming the file and the dataset, a
    chunk failing its checksum included (see `reading`). `checked(ds)` makes one."""

    def __getitem__(self, args, new_dtype=None):
        with reading(self.file.filename, self):
            return super().__getitem__(args) if new_dtype is None else super().__getitem__(args, new_dtype)

    def read_direct(self, dest, source_sel=None, dest_sel=None):
        with reading(self.file.filename, self):
            return super().read_direct(dest, source_sel, dest_sel)


def checked(ds):
    """`ds` (an h5py dataset) as a CheckedDataset."""
    return ds if isinstance(ds, CheckedDataset) else CheckedDataset(ds.id)


def _check_dump(f, path, allow_incomplete):
    fmt = _plain(f.attrs.get("format"))
    if fmt is None:
        raise DumpReadError(f"'{path}' is an HDF5 file but not a tensorprobe dump (no 'format' attribute)")
    if fmt != FORMAT:
        raise DumpReadError(f"'{path}' is not a tensorprobe dump (its format is {fmt!r})")
    version = _plain(f.attrs.get("format_version"))
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise DumpReadError(
            f"'{path}' has format_version {version!r}; this tensorprobe reads format_version "
            f"{FORMAT_VERSION} (a newer tensorprobe may read it)"
        )
    _check_storage(f, path)
    from tensorprobe import trainfile

    if trainfile.is_training(f.attrs):  # ProbeCallback's: a record per step, each whole
        trainfile.check(f, path)
        return
    if _plain(f.attrs.get("merge_mode")) == "virtual":
        _check_shards_beside(f, path)
        check_shards(f, path)
    if not is_complete(f.attrs):
        if not allow_incomplete:
            raise IncompleteDumpError(
                f"'{path}' is an incomplete dump ({_completeness(f.attrs)}: the dump was interrupted "
                f"or is still running); pass {errors.name('allow_incomplete')} to read it anyway"
            )
        return  # rows may be missing, and the reader was warned
    sources = f.get(f"{INPUTS}/source")
    if isinstance(sources, h5py.Dataset) and h5py.check_string_dtype(sources.dtype) is None:
        raise DumpReadError(f"'{path}' is a damaged dump: /inputs/source is not a list of strings")
    wrong = rows_disagree(f) or job_rows_disagree(f)
    if wrong:
        raise DumpReadError(f"'{path}' is a damaged dump: {wrong}")


def element_blocks(ds, elements):
    """(key, flat offset) for reading dataset `ds` in blocks of at most `elements` elements
    (at least one), each contiguous in C order so that its flat indexes are offset, offset+1,
    ...: whole rows when a row fits (aligned to the chunks along the first axis when they are
    smaller than a block), else parts of one row along the first axis whose slices fit. Memory
    stays bounded by `elements` however large one sample is."""
    shape = ds.shape
    if not shape:
        yield (), 0
        return
    if 0 in shape:
        yield (slice(0, shape[0]),), 0
        return
    elements = max(1, int(elements))
    # the first axis k whose slices (all axes after k) fit in a block: blocks range over k
    k, inner = 0, int(np.prod(shape[1:], dtype=np.int64))
    while inner > elements:
        k += 1
        inner //= shape[k]
    step = max(1, elements // inner)
    if k == 0 and ds.chunks and ds.chunks[0] < step:
        step -= step % ds.chunks[0]
    for outer in np.ndindex(*shape[:k]):
        for start in range(0, shape[k], step):
            stop = min(shape[k], start + step)
            offset = int(np.ravel_multi_index(outer + (start,) + (0,) * (len(shape) - k - 1), shape))
            yield tuple(outer) + (slice(start, stop),), offset


def row_counts(f):
    """{dataset path: rows} for every dataset of every data group (None for one without a
    first axis), in the order HDF5 lists them."""
    counts = {}
    for group in data_groups(f):
        def visit(name, obj, group=group):
            if isinstance(obj, h5py.Dataset):
                counts[f"/{group}/{name}"] = obj.shape[0] if obj.ndim else None

        f[group].visititems(visit)
    return counts


def rows_disagree(f):
    """Why the rows of a complete dump `f` disagree, or None: every dataset, and the root
    attribute `samples` when present, must count as many rows as /inputs/source."""
    sources = f.get(f"{INPUTS}/source")
    if not isinstance(sources, h5py.Dataset):
        return "it has no /inputs/source"
    if sources.ndim != 1:
        return "/inputs/source is not a list"
    rows = sources.shape[0]
    for name, n in row_counts(f).items():
        if n != rows:
            return f"{name} holds {'no' if n is None else n} rows, /inputs/source {rows}"
    samples = _plain(f.attrs.get("samples", rows))
    if samples != rows:
        return f"its attribute samples is {samples!r}, /inputs/source holds {rows} rows"
    return None


def skipped_rows(f):
    """The sample rows a dump passed over as bad: /inputs/skipped's attribute `rows`, or for a
    file written before it was recorded, its number of entries."""
    skipped = f.get(f"{INPUTS}/skipped")
    if not isinstance(skipped, h5py.Dataset):
        return 0
    return int(_plain(skipped.attrs.get("rows", skipped.shape[0])))


def is_output_of(path, job):
    """Whether `path` is a complete dump whose job attributes (shard, its rows, the input and
    options fingerprints, what its input files held) are `job`'s: the work --resume may skip."""
    try:
        with open_dump(path) as f, reading(path):
            attrs = root_attrs(f)
    except DumpReadError:
        return False
    return all(attrs.get(k) == job.get(k) for k in RESUME)


# ---- checks for readers (open_dump calls them): a dump holds its job's rows; a merged dump
# ---- reads the very shards it was merged from

def job_rows_disagree(f):
    """Why a complete dump does not hold its job's rows, or None: /inputs/source and the rows
    skipped as bad must add up to `shard_rows`' range for a shard, else to `total_rows`
    (files without `total_rows`, from older versions, are not checked)."""
    if "total_rows" not in f.attrs:
        return None
    total = _plain(f.attrs["total_rows"])
    if not _is_count(total):
        return f"its attribute total_rows is {total!r}, not a number of rows"
    expected, what = total, f"its job's {total} rows"
    if "shard_rows" in f.attrs:
        bounds = _plain(f.attrs["shard_rows"])
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_count, bounds))
                and bounds[0] <= bounds[1] <= total):
            return f"its attribute shard_rows is {bounds!r}, not rows [start, stop) of {total}"
        expected, what = bounds[1] - bounds[0], f"its shard's {bounds[1] - bounds[0]} rows [{bounds[0]}, {bounds[1]}) of {total}"
    sources = f[f"{INPUTS}/source"].shape[0]
    try:
        skipped = skipped_rows(f)
    except (TypeError, ValueError):
        return "/inputs/skipped has no valid rows attribute"
    if sources + skipped != expected:
        held = f"{sources} rows" + (f" and {skipped} skipped as bad" if skipped else "")
        return f"it holds {held}, not {what}"
    return None


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


SHARD_RECORDS = ("merged_rows", "merged_sha256", "merged_size", "merged_mtime_ns")


def shard_records(shards):
    """The attributes a merged dump keeps of each of its shards (ShardFile-like records with
    path, rows, digest): its rows, its content digest, and the size and modification time its
    file had, which readers compare (check_shards)."""
    infos = [os.stat(s.path) for s in shards]
    return {
        "merged_rows": np.asarray([s.rows for s in shards], dtype=np.int64),
        "merged_sha256": [s.digest for s in shards],
        "merged_size": np.asarray([i.st_size for i in infos], dtype=np.int64),
        "merged_mtime_ns": np.asarray([i.st_mtime_ns for i in infos], dtype=np.int64),
    }


def check_shards(f, path):
    """A virtual merged dump reads its shards, named relative to its folder (which
    _check_shards_beside checks are there), and HDF5 reads a shorter one as zeros without a
    word, another file's rows under the old statistics: refuse it unless every shard is still
    the file that was merged. Each must be a complete dump of the merged job (its fingerprints and
    total_rows), shard K/N at place K, with the rows and the content digest (data_sha256)
    recorded at the merge; that costs one stat and one read of its root attributes (about 1
    ms). A shard whose size or modification time changed since (copied without keeping
    times, or rewritten) has its contents hashed again (0.4 s per 100 MB in the page cache)
    and must give the recorded digest."""
    folder = Path(path).parent
    names = _plain(f.attrs.get("merged_from")) or []
    records = [_plain(f.attrs.get(key)) for key in SHARD_RECORDS]
    if not isinstance(names, list) or not all(isinstance(r, list) and len(r) == len(names) for r in records):
        raise DumpReadError(f"'{path}' is a merged dump that does not record its shards' rows and contents "
                            "(merged by an older tensorprobe): merge the shards again")
    job = {key: _plain(f.attrs.get(key)) for key in JOB}
    for k, (name, rows, digest, size, mtime) in enumerate(zip(names, *records)):
        wrong = _shard_differs(folder / str(name), f"{k}/{len(names)}", job, rows, digest, (size, mtime))
        if wrong:
            raise DumpReadError(f"'{path}' is a merged dump whose shard '{name}' is no longer the file that was "
                                f"merged: {wrong}; put that shard back or merge the shards again")


def _shard_differs(shard, place, job, rows, digest, stat_then):
    """Why the file `shard` is not the shard `place` merged with `rows` and `digest`, or None."""
    try:
        info = os.stat(shard)
        with h5py.File(shard, "r") as s:
            attrs = root_attrs(s)
            if attrs.get("format") != FORMAT or not is_complete(attrs):
                return "it is not a complete tensorprobe dump"
            if attrs.get("shard") != place:
                return f"it is shard {attrs.get('shard')!r}, not {place}"
            for key, value in job.items():
                if attrs.get(key) != value:
                    return f"it belongs to another job (its {key} differs)"
            if attrs.get("samples") != rows or s[f"{INPUTS}/source"].shape[0] != rows:
                return f"it holds {attrs.get('samples')} rows, {rows} were merged"
            if attrs.get(DIGEST, digest) != digest:  # (a shard from before digests has none)
                return "its contents differ (data_sha256)"
            if (info.st_size, info.st_mtime_ns) != tuple(stat_then) and content_digest(s) != digest:
                return "its contents differ from its digest (data_sha256): it was changed after it was written"
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        return f"it is not a readable dump ({_one_line(e)})"
    return None


def _check_storage(f, path):
    """Every dataset of a dump keeps its values in the dump itself, or, in a virtual merged
    dump, in the shards it records beside it. HDF5 can also point a dataset at any other
    file (external storage: raw bytes of /etc/passwd read as numbers; a virtual dataset over
    another file): such a file is refused, whatever its attributes say."""
    merged = _plain(f.attrs.get("merge_mode")) == "virtual"
    allowed = {os.path.normpath(n) for n in _plain(f.attrs.get("merged_from")) or []} if merged else set()
    found = []
    f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    for ds in found:
        if ds.external:
            raise DumpReadError(f"'{path}': dataset {ds.name} keeps its values in another file "
                                f"('{_plain(ds.external[0][0])}', HDF5 external storage); a dump never does")
        if ds.is_virtual:
            for source in ds.virtual_sources():
                name = os.path.normpath(source.file_name)
                if name not in allowed or source.dset_name.lstrip("/") != ds.name.lstrip("/"):
                    raise DumpReadError(
                        f"'{path}': dataset {ds.name} reads {source.dset_name} of '{source.file_name}', "
                        "which is not one of the shards this merged dump records (merged_from)"
                    )


def _check_shards_beside(f, path):
    """A virtual merged dump reads its shards, named relative to its folder; HDF5 would read
    a missing one as zeros without a word, so refuse instead."""
    folder = Path(path).parent
    for name in _plain(f.attrs.get("merged_from")) or []:
        if not (folder / name).is_file():
            raise DumpReadError(
                f"'{path}' is a merged dump whose shard '{name}' is missing: the shards must stay beside "
                "it (merge --copy writes a self-contained file)"
            )


def is_complete(attrs):
    """Whether a dump's root attributes (h5py's or read_summary's) mark it complete."""
    return _plain(attrs.get("complete")) is True


def _completeness(attrs):
    return "no 'complete' attribute" if "complete" not in attrs else f"complete is {_plain(attrs['complete'])!r}"


def read_summary(path, allow_incomplete=False):
    """What `summary` shows and `dump` prints at its end, as plain Python values: the root
    attributes, the input files, and every dataset of every data group in model order."""
    from tensorprobe import trainfile

    with open_dump(path, allow_incomplete) as f, reading(path):
        if trainfile.is_training(f.attrs):
            return {**trainfile.read_summary(f), "attrs": root_attrs(f)}
        return {"attrs": root_attrs(f), "inputs": input_files(f, path), "datasets": datasets(f)}


def root_attrs(f):
    return {k: _plain(v) for k, v in f.attrs.items()}


def data_groups(f):
    """The top-level groups that hold computed values (/activations, /gradients, any other but
    /inputs), activations and gradients first."""
    names = [k for k, v in f.items() if k != INPUTS and isinstance(v, h5py.Group)]
    known = [g for g in GROUP_ORDER if g in names]
    return known + sorted(n for n in names if n not in GROUP_ORDER)


def datasets(f, all_attributes=True):
    """One record per dataset in every data group, in model order (see `in_model_order`).
    Without `all_attributes`, only `layer` and `order` are read (HDF5 attributes cost about
    0.1 ms each, which adds up over hundreds of datasets)."""
    records = []
    for group in data_groups(f):
        def visit(name, obj, group=group):
            if isinstance(obj, h5py.Dataset):
                records.append(_dataset_record(group, name, obj, all_attributes))

        f[group].visititems(visit)
    return in_model_order(records)


def _dataset_record(group, name, ds, all_attributes=True):
    if all_attributes:
        attrs = {k: _plain(v) for k, v in ds.attrs.items()}
    else:
        attrs = {k: _plain(ds.attrs[k]) for k in ("layer", "order") if k in ds.attrs}
    attrs.pop("sample_shape", None)  # the dataset's own shape says it
    record = {
        "path": name,
        "group": group,
        "name": dataset_name(group, name),
        "layer": str(attrs.pop("layer", "")),
        "layer_class": attrs.pop("layer_class", ""),
        "order": attrs.pop("order", None),
        "sample_shape": list(ds.shape[1:]),
        "samples": ds.shape[0] if ds.ndim else 1,
        "dtype": "string" if h5py.check_string_dtype(ds.dtype) is not None else str(ds.dtype),
        "mib": ds.size * ds.dtype.itemsize / (1 << 20),
    }
    if all_attributes:
        check_statistics(ds, attrs)
    record.update({k: attrs.pop(k) for k in STAT_KEYS if k in attrs})
    record.update(sorted(attrs.items()))  # per-channel statistics, call, output, target, ...
    return record


CHANNEL_STATS = ("channel_min", "channel_max", "channel_mean", "channel_std", "channel_count")


def check_statistics(ds, attrs=None):
    """Refuse a dataset whose statistics attributes are not what a dump writes: min, max,
    mean, std and zeros_fraction numbers, nan_count and inf_count counts, per-channel lists
    with one number per channel (the last axis). A doctored or damaged attribute is one
    DumpReadError naming the file, the dataset and the attribute, never a wrong figure shown
    or merged. Missing ones are allowed (a dump of an empty selection writes none)."""
    attrs = {k: _plain(v) for k, v in ds.attrs.items()} if attrs is None else attrs
    count_keys = ("nan_count", "inf_count", "first_nonfinite_sample")
    for key in (*STAT_KEYS, "first_nonfinite_sample"):
        if key in attrs:
            value = attrs[key]
            integral = isinstance(value, int) and not isinstance(value, bool)
            if key in count_keys and not (integral and value >= 0):
                _bad_statistic(ds, key, value, "a count")
            extreme_of_bools = key in ("min", "max") and ds.dtype.kind == "b"  # kept in the data's type
            if key not in count_keys and not extreme_of_bools and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                _bad_statistic(ds, key, value, "a number")
            if extreme_of_bools and not isinstance(value, bool):
                _bad_statistic(ds, key, value, "True or False")
    channels = ds.shape[-1] if ds.ndim >= 2 else None
    for key in CHANNEL_STATS:
        if key in attrs:
            value = attrs[key]
            bools = key in ("channel_min", "channel_max") and ds.dtype.kind == "b"
            numbers = isinstance(value, list) and all(
                isinstance(v, bool) if bools else isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value)
            if not numbers or len(value) != channels:
                _bad_statistic(ds, key, value, f"{channels} numbers, one a channel")


def _bad_statistic(ds, key, value, expected):
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise DumpReadError(f"'{ds.file.filename}' is a damaged dump: dataset {ds.name} has statistics "
                        f"attribute {key} = {shown}, not {expected}")


def in_model_order(records):
    """Sort dataset records by group, then in the order the model computes them: by the
    `order` attribute (the layer's position in the model, parents first as `layers` lists
    them), except that a nested model's own output (`vgg16/__output__`) comes right after the
    layers inside it, since it is computed from them. Records without `order` go last."""
    groups = list(dict.fromkeys(r["group"] for r in records))
    last_inside = {}  # (group, layer path) -> the largest order of a layer nested inside it
    for r in records:
        if _order(r) is not None:
            parts = r["layer"].split("/")
            for depth in range(1, len(parts)):
                outer = (r["group"], "/".join(parts[:depth]))
                last_inside[outer] = max(last_inside.get(outer, -1), r["order"])

    def key(r):
        group, order, layer = groups.index(r["group"]), _order(r), r["layer"]
        if order is None:
            return (group, 1, 0, 0, 0, r["path"])
        inside = last_inside.get((r["group"], layer))
        if inside is not None:  # a nested model's own output: after its contents, inner first
            return (group, 0, max(inside, order), 1, -layer.count("/"), r["path"])
        return (group, 0, order, 0, 0, r["path"])

    return sorted(records, key=key)


def _order(record):
    order = record["order"]
    if isinstance(order, int) and not isinstance(order, bool) and order >= 0:
        return order
    return None


def input_files(f, path, block=1 << 16):
    """The input files of /inputs/source in order of first appearance, each with its number of
    rows (a row's source is the file, or `file[i]` for row i of a file of several samples)."""
    if INPUTS not in f or "source" not in f[INPUTS]:
        return []
    sources = checked(f[INPUTS]["source"])
    if h5py.check_string_dtype(sources.dtype) is None or sources.ndim != 1:
        raise DumpReadError(f"'{path}': /inputs/source is not a list of strings")
    files = {}
    for start in range(0, sources.shape[0], block):
        for source in sources.asstr()[start : start + block]:
            name = _ROW_SUFFIX.sub("", source)
            files[name] = files.get(name, 0) + 1
    return [{"file": name, "rows": rows} for name, rows in files.items()]


_ROW_SUFFIX = ROW_SUFFIX


def _is_hdf5(path):
    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False


def _one_line(e):
    """h5py's message, on one line."""
    return " ".join(str(e).split()) or type(e).__name__


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
