"""The HDF5 dump layout: create it, append batch by batch, finish atomically; read it back.

Layout (format_version 1), documented in the README:
  root attributes   format, format_version, tensorprobe_version, model, model_sha256,
                    model_format, loader, tensorflow_version, keras_version, created,
                    command, batch_size, samples, complete, and how inputs were
                    prepared: preprocess, scale, offset, resize, interpolation
  /inputs/source    one UTF-8 string per sample row
  /inputs/skipped   (K, 2) UTF-8 strings [path, reason], inputs passed over by --skip-bad
                    (present only when one was)
  /activations/...  one dataset per selected layer output, (N, *sample_shape), with the
                    attributes layer, layer_class, order (position in the model's layer
                    order), sample_shape and the statistics of stats.py
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tensorprobe.errors import OutputExistsError, TensorprobeError, UsageError, WriteError
from tensorprobe.stats import RunningStats

FORMAT = "tensorprobe"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # aim for about 1 MiB per chunk
STAT_KEYS = ("min", "max", "mean", "std", "zeros_fraction", "nan_count", "inf_count")


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


@dataclass
class DatasetSpec:
    """Where one computed output goes, and what it is."""

    name: str  # path under /activations
    layer: str  # the layer's path
    layer_class: str
    extra: dict  # further attributes (call, output)


class DumpWriter:
    """Write a dump under a temporary name in the output's folder; rename it into place on
    `finish()`. Leaving the `with` block without `finish()` (an error, Ctrl-C) deletes it, so
    nothing ever appears at the output path half-written and a file that was there survives."""

    def __init__(self, output, specs, attrs, overwrite=False):
        self.output = Path(output)
        self.specs = specs
        self.overwrite = overwrite
        check_output(self.output, overwrite)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.output.name}.", suffix=".partial", dir=self.output.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = 0
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
        except OSError as e:
            raise WriteError(f"--output '{self.output}': write failed: {e}") from e
        self.rows = stop

    def skip(self, entries):
        """Record inputs passed over as bad (--skip-bad): /inputs/skipped gets one row
        [path, reason] each; the dataset appears with the first one."""
        if "inputs/skipped" not in self.file:
            self.file.create_dataset("inputs/skipped", shape=(0, 2), maxshape=(None, 2), chunks=(256, 2),
                                     dtype=h5py.string_dtype("utf-8"))
        ds = self.file["inputs/skipped"]
        start = ds.shape[0]
        try:
            ds.resize((start + len(entries), 2))
            ds[start:] = [list(entry) for entry in entries]
        except OSError as e:
            raise WriteError(f"--output '{self.output}': write failed: {e}") from e

    def _create(self, i, array):
        spec = self.specs[i]
        sample_shape = array.shape[1:]
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * array.dtype.itemsize)
        rows_per_chunk = max(1, min(CHUNK_BYTES // row_bytes, max(1, array.shape[0])))
        ds = self.file["activations"].create_dataset(
            spec.name, shape=(0,) + sample_shape, maxshape=(None,) + sample_shape,
            chunks=(rows_per_chunk,) + sample_shape, dtype=array.dtype,
        )
        ds.attrs["layer"] = spec.layer
        ds.attrs["layer_class"] = spec.layer_class
        ds.attrs["order"] = i  # position in the model's layer order (HDF5 lists names sorted)
        ds.attrs["sample_shape"] = np.asarray(sample_shape, dtype=np.int64)
        for key, value in spec.extra.items():
            ds.attrs[key] = value
        self.datasets[i] = ds
        return ds

    def finish(self):
        """Write the statistics, mark the file complete and move it to the output path."""
        try:
            for ds, stats in zip(self.datasets, self.stats):
                if ds is None:
                    continue
                for key, value in stats.result().items():
                    ds.attrs[key] = value
            self.file.attrs["samples"] = self.rows
            self.file.attrs["complete"] = True
            self.file.close()
            if self.output.exists() and not self.overwrite:  # appeared while we worked
                raise OutputExistsError(f"--output '{self.output}' exists; pass --overwrite to replace it")
            os.replace(self.tmp, self.output)
        except OSError as e:
            self.abort()
            raise WriteError(f"--output '{self.output}': write failed: {e}") from e
        except BaseException:
            self.abort()
            raise

    def abort(self):
        try:
            file = getattr(self, "file", None)
            if file is not None and file.id.valid:
                file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def read_summary(path):
    """The root attributes and every dataset of a dump, as plain Python values."""
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        datasets = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets.append(
                    {
                        "path": name,
                        "layer": _plain(obj.attrs.get("layer", "")),
                        "order": _plain(obj.attrs.get("order", -1)),
                        "sample_shape": list(obj.shape[1:]),
                        "samples": obj.shape[0],
                        "dtype": str(obj.dtype),
                        "mib": obj.size * obj.dtype.itemsize / (1 << 20),
                        **{k: _plain(obj.attrs[k]) for k in STAT_KEYS if k in obj.attrs},
                    }
                )

        if "activations" in f:
            f["activations"].visititems(visit)
    datasets.sort(key=lambda d: d["order"])
    return {"attrs": attrs, "datasets": datasets}


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
