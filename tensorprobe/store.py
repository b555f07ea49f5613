"""The HDF5 dump layout: create it, append batch by batch, finish atomically; read it back.

The layout (format_version 1: root attributes, /inputs/source, /inputs/skipped, /activations,
/gradients, /tensors, dataset attributes, naming rules) is specified once, in docs/hdf5-layout.md;
a change here is a change there, and one that a reader of format_version 1 cannot read raises
FORMAT_VERSION.

Every dataset of a data group and /inputs/source hold one row per sample. DumpWriter checks
it, and that those are all the rows the job was to write, before it marks a file complete;
reading (`summary`, `diff`, `plot`) goes through open_dump, which refuses anything but a
complete dump in a format this version reads whose datasets agree in rows, with one
DumpReadError naming the file.
"""

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tensorprobe.errors import (
    DumpReadError,
    IncompleteDumpError,
    OutputExistsError,
    TensorprobeError,
    UsageError,
    WriteError,
)
from tensorprobe.shard import JOB, SHARD_KEYS
from tensorprobe.stats import RunningStats

import shutil

FORMAT = "tensorprobe"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # aim for about 1 MiB per chunk
SPACE_MARGIN = 4 << 20  # room kept free for HDF5's own metadata when the data is written
_damaged = False  # HDF5 failed to write and could not close a file cleanly: see hdf5_damaged()


def hdf5_damaged():
    """Whether a failed write left the HDF5 library holding a file it cannot close. The
    library then crashes when the process exits normally; the CLI ends such a process
    with os._exit after reporting the error."""
    return _damaged


def check_room(output, needed_bytes, max_bytes=None):
    """Refuse a dump that cannot fit: more than --max-bytes, or than the free space."""
    free = shutil.disk_usage(Path(output).parent).free
    if max_bytes is not None and needed_bytes > max_bytes:
        raise UsageError(
            f"--output '{output}': the dump needs about {mib(needed_bytes)}, more than --max-bytes {mib(max_bytes)}"
        )
    if needed_bytes + SPACE_MARGIN > free:
        raise WriteError(
            f"--output '{output}': the dump needs about {mib(needed_bytes)} but only {mib(free)} are free"
        )
    return free


def mib(n):
    return f"{n / (1 << 20):,.1f} MiB"
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


def check_hdf5_name(path, option="--output"):
    """Refuse an HDF5 output named like another format's file (acts.npy), for the CLI's
    --output/--save-a/--save-b and the API's `output`/`save_a`/`save_b` alike."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix in OTHER_FORMATS:
        raise UsageError(f"{option} '{os.fspath(path)}': the output is an HDF5 file, not {OTHER_FORMATS[suffix]} "
                         f"({suffix}); name it .h5 or .hdf5")


def check_output(path, overwrite):
    """Fail early, before any work, when `path` cannot be the output of a dump."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--output '{path}' is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"--output '{path}' exists; pass --overwrite to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--output '{path}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output '{path}': folder '{parent}' is not writable")


def partial_path(output):
    """A new, empty file beside `output` under a hidden temporary name (`.NAME.*.partial`),
    to write to and then `move_into_place`. It gets the permissions a new file would (mkstemp
    makes it private)."""
    output = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def move_into_place(tmp, output, overwrite):
    """Rename the finished `tmp` to `output` (atomic within a folder). Refuses an output that
    appeared meanwhile unless `overwrite`."""
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"--output '{output}' exists; pass --overwrite to replace it")
    os.replace(tmp, output)


@contextlib.contextmanager
def atomic_output(output, overwrite):
    """Yield a temporary path to write the whole output to; on success move it to `output`,
    on any failure (or Ctrl-C) delete it, so `output` is never half-written and a file that
    was there survives a failure. An OSError inside the block is reported as a failed write,
    so the block should only write. For outputs written in one go (pictures); DumpWriter
    does the same for dumps written batch by batch."""
    check_output(output, overwrite)
    tmp = partial_path(output)
    try:
        yield tmp
        move_into_place(tmp, output, overwrite)
    except OSError as e:
        raise WriteError(f"--output '{output}': write failed: {e}") from e
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
    the ones skipped as bad."""

    def __init__(self, output, specs, attrs, overwrite=False, compression=(None, None), *, rows):
        self.output = Path(output)
        self.specs = specs
        self.overwrite = overwrite
        self.compression = compression  # (h5py filter name or None, its options)
        self.expected_rows = rows
        check_output(self.output, overwrite)
        self.tmp = partial_path(self.output)
        self.rows = 0
        self.skipped_rows = 0
        self.stats = [RunningStats() for _ in specs]
        self.datasets = [None] * len(specs)
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

    def append(self, sources, arrays):
        """Append one batch: its row sources and one array per spec, first axis the batch."""
        n = len(sources)
        start, stop = self.rows, self.rows + n
        needed = sum(a.nbytes for a in arrays) + SPACE_MARGIN
        free = shutil.disk_usage(self.tmp.parent).free
        if free < needed:  # fail before HDF5 does: a failed HDF5 write cannot be cleaned up
            raise WriteError(
                f"--output '{self.output}': no space left on the device ({mib(free)} free, "
                f"the next batch needs {mib(needed)})"
            )
        try:
            self.sources.resize((stop,))
            self.sources[start:stop] = sources
            for i, (spec, array) in enumerate(zip(self.specs, arrays)):
                if array.shape[0] != n:
                    raise TensorprobeError(
                        f"layer '{spec.layer}' returned {array.shape[0]} rows for a batch of {n}"
                    )
                ds = self.datasets[i] or self._create(i, array)
                ds.resize((stop,) + ds.shape[1:])
                ds[start:stop] = array
                self.stats[i].update(array)
        except (OSError, RuntimeError) as e:  # h5py reports failed writes as either
            raise WriteError(f"--output '{self.output}': write failed: {_write_reason(e)}") from e
        self.rows = stop

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
        except OSError as e:
            raise WriteError(f"--output '{self.output}': write failed: {e}") from e
        self.skipped_rows += rows

    def _create(self, i, array):
        spec = self.specs[i]
        sample_shape = array.shape[1:]
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * array.dtype.itemsize)
        rows_per_chunk = max(1, min(CHUNK_BYTES // row_bytes, max(1, array.shape[0])))
        ds = self.file.require_group(spec.group).create_dataset(
            spec.name, shape=(0,) + sample_shape, maxshape=(None,) + sample_shape,
            chunks=(rows_per_chunk,) + sample_shape, dtype=array.dtype,
            compression=self.compression[0], compression_opts=self.compression[1],
        )
        ds.attrs["layer"] = spec.layer
        ds.attrs["layer_class"] = spec.layer_class
        ds.attrs["sample_shape"] = np.asarray(sample_shape, dtype=np.int64)
        for key, value in spec.extra.items():
            ds.attrs[key] = value
        self.datasets[i] = ds
        return ds

    def finish(self):
        """Check that every row is written, write the statistics, mark the file complete and
        move it to the output path. Rows missing (or extra) delete the file and raise
        WriteError."""
        try:
            self._check_rows()
            for ds, stats in zip(self.datasets, self.stats):
                if ds is not None:
                    write_stats(ds, stats)
            self.file.attrs["samples"] = self.rows
            self.file.attrs["complete"] = True
            self.file.close()
            move_into_place(self.tmp, self.output, self.overwrite)
        except (OSError, RuntimeError) as e:
            self.abort()
            raise WriteError(f"--output '{self.output}': write failed: {_write_reason(e)}") from e
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
            raise WriteError(
                f"--output '{self.output}': {name} holds {n} rows, expected {expected} "
                f"({self.expected_rows} input rows{skipped}); the dump is not kept"
            )

    def nonfinite(self):
        """(dataset path, nan count, inf count, first sample row) for each dataset holding
        NaN or Inf."""
        return [
            (f"{spec.group}/{spec.name}", st.nan_count, st.inf_count, st.first_nonfinite_row)
            for spec, st in zip(self.specs, self.stats)
            if st.nan_count or st.inf_count
        ]

    def abort(self):
        """Delete the temporary file. After a failed write (a full disk) HDF5 still holds
        unwritten data that closing would try to flush, and fail on again: the unlinked file is
        truncated first, which frees its space, so that the close succeeds."""
        self.tmp.unlink(missing_ok=True)
        file = getattr(self, "file", None)
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
    check_regular_file(path)
    try:
        f = h5py.File(path, "r")
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
def reading(path):
    """Turn the errors h5py raises on a damaged file (HDF5 errors surface as OSError, or as
    KeyError/RuntimeError for broken object headers and links) into one DumpReadError that
    names the file. Only wraps reads, so a bug elsewhere still shows as itself."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as e:
        raise DumpReadError(f"'{path}' is a damaged or truncated dump ({_one_line(e)})") from e


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
    if _plain(f.attrs.get("merge_mode")) == "virtual":
        _check_shards_beside(f, path)
    if not is_complete(f.attrs):
        if not allow_incomplete:
            raise IncompleteDumpError(
                f"'{path}' is an incomplete dump ({_completeness(f.attrs)}: the dump was interrupted "
                "or is still running); pass --allow-incomplete to read it anyway"
            )
        return  # rows may be missing, and the reader was warned
    sources = f.get(f"{INPUTS}/source")
    if isinstance(sources, h5py.Dataset) and h5py.check_string_dtype(sources.dtype) is None:
        raise DumpReadError(f"'{path}' is a damaged dump: /inputs/source is not a list of strings")
    wrong = rows_disagree(f)
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


JOB_KEYS = SHARD_KEYS + JOB


def is_output_of(path, job):
    """Whether `path` is a complete dump whose job attributes (shard, its rows, the input and
    options fingerprints) are `job`'s: the work --resume may skip."""
    try:
        with open_dump(path) as f, reading(path):
            attrs = root_attrs(f)
    except DumpReadError:
        return False
    return all(attrs.get(k) == job.get(k) for k in JOB_KEYS)


def check_regular_file(path):
    """A dump (or shard) is read only from a regular file: a FIFO would block the reader
    forever, and a device (/dev/zero) is no dump."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise DumpReadError(f"'{path}' cannot be read ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
        raise DumpReadError(f"'{path}' is {kind}, not a dump file")


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
    with open_dump(path, allow_incomplete) as f, reading(path):
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
        "dtype": str(ds.dtype),
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
            if key not in count_keys and (isinstance(value, bool) or not isinstance(value, (int, float))):
                _bad_statistic(ds, key, value, "a number")
    channels = ds.shape[-1] if ds.ndim >= 2 else None
    for key in CHANNEL_STATS:
        if key in attrs:
            value = attrs[key]
            numbers = isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
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
    sources = f[INPUTS]["source"]
    if h5py.check_string_dtype(sources.dtype) is None or sources.ndim != 1:
        raise DumpReadError(f"'{path}': /inputs/source is not a list of strings")
    files = {}
    for start in range(0, sources.shape[0], block):
        for source in sources.asstr()[start : start + block]:
            name = _ROW_SUFFIX.sub("", source)
            files[name] = files.get(name, 0) + 1
    return [{"file": name, "rows": rows} for name, rows in files.items()]


_ROW_SUFFIX = re.compile(r"\[\d+\]$")


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
