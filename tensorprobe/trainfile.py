"""The training file (kind = "training", docs/hdf5-layout.md "The training file"): what
ProbeCallback records while a model trains, one record per recorded optimizer step. Pure
h5py/NumPy: the statistics arrive computed (backends/keras/callback.py).

    /steps                              int64 (S,): the optimizer iterations recorded
    /stats/<path>/<stat>                float64 (S,): min, max, mean, std, zeros_fraction,
                                        nan_count, inf_count; gradient_<stat> with gradients
    /histograms/<path>/counts, edges    int64 (S, BINS), float64 (S, BINS + 1);
                                        gradient_counts, gradient_edges with gradients
    /activations/<path>, /gradients/<path>   (V, probe rows, ...) with values: steps 0..V-1

The file is closed between records, so any reader sees whole records: each record grows
every series to the new step's row first and /steps last, so /steps counts the records that
are whole (a writer killed half-way leaves longer series, which readers cut to /steps).
HDF5 locks a file while it is open, so the writer and the readers (open_with_retry) wait
their turn for a moment instead of failing.
"""

import json
import time

import h5py
import numpy as np

from tensorprobe.errors import DumpReadError, WriteError

KIND = "training"
STATS = ("min", "max", "mean", "std", "zeros_fraction", "nan_count", "inf_count")
BINS = 32  # histogram bins per record, between the step's finite min and max
GRADIENT = "gradient_"  # the prefix of a gradient's series beside its activation's
LOCK_WAIT = 30.0  # seconds to wait for the other side's HDF5 lock


def is_training(attrs):
    value = attrs.get("kind")
    return (value.decode() if isinstance(value, bytes) else value) == KIND


def open_with_retry(path, mode, wait=LOCK_WAIT):
    """h5py.File(path, mode), waiting while another process holds the file's HDF5 lock (the
    callback writing a record, a `summary` reading one)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class TrainingWriter:
    """Create the training file at `output` (the caller checked the path: store.check_output)
    and append records. `attrs`: the root attributes (`format` and `format_version` among
    them); `layers`: [(path, layer, layer_class, order, sample_shape, dtype, has_gradient)]
    in model order; `probe_rows`: the rows of the probe batch."""

    def __init__(self, output, layers, attrs, *, probe_rows, values=False, gradients=False, max_bytes=None,
                 option="output"):
        self.output, self.option = str(output), option
        self.layers = layers
        self.values, self.gradients = values, gradients
        self.max_bytes = max_bytes
        self.values_on = values
        self.records = 0
        self.value_records = 0
        self.first_nonfinite = None
        self.last_step = None
        with self._open("w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["kind"] = KIND
            f.attrs["complete"] = True  # every record in it is whole (see the module's docstring)
            f.attrs["status"] = "running"
            f.attrs["histogram_bins"] = BINS
            f.create_dataset("steps", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
            for path, layer, layer_class, order, shape, dtype, has_gradient in layers:
                group = f.create_group(f"stats/{path}")
                for key, value in (("layer", layer), ("layer_class", layer_class), ("order", order),
                                   ("sample_shape", np.asarray(shape, np.int64)), ("dtype", dtype),
                                   ("probe_rows", probe_rows)):
                    group.attrs[key] = value
                prefixes = ("", GRADIENT) if gradients and has_gradient else ("",)
                for prefix in prefixes:
                    for stat in STATS:
                        group.create_dataset(prefix + stat, shape=(0,), maxshape=(None,), chunks=(1024,),
                                             dtype=np.float64)
                    hist = f.require_group(f"histograms/{path}")
                    hist.create_dataset(prefix + "counts", shape=(0, BINS), maxshape=(None, BINS),
                                        chunks=(64, BINS), dtype=np.int64)
                    hist.create_dataset(prefix + "edges", shape=(0, BINS + 1), maxshape=(None, BINS + 1),
                                        chunks=(64, BINS + 1), dtype=np.float64)
                row = (probe_rows, *shape)
                groups = ("activations", "gradients") if gradients and has_gradient else ("activations",)
                for name in groups if values else ():
                    f.create_dataset(f"{name}/{path}", shape=(0, *row), maxshape=(None, *row),
                                     chunks=(1, *row), dtype=dtype)

    def _open(self, mode):
        try:
            return open_with_retry(self.output, mode)
        except OSError as e:
            raise WriteError(f"{self.option} '{self.output}': cannot open the training file to write: {e}") from e

    def append(self, step, stats, hists, values=None):
        """One record: `stats[path]` {"": [7 floats], "gradient_": [...]}, `hists[path]` the same
        with (counts, edges), `values[path]` {"activations": array, "gradients": array} or None.
        Returns the first (layer path, group) with a NaN or Inf in this record, or None."""
        n = self.records
        keep_values = self.values_on and values is not None and self._values_fit(values)
        try:
            with self._open("a") as f:
                for path, *_ in self.layers:
                    for prefix, figures in stats[path].items():
                        for stat, value in zip(STATS, figures):
                            _put(f, f"stats/{path}/{prefix}{stat}", n, value)
                        counts, edges = hists[path][prefix]
                        _put(f, f"histograms/{path}/{prefix}counts", n, counts)
                        _put(f, f"histograms/{path}/{prefix}edges", n, edges)
                    if keep_values:
                        for group, array in values[path].items():
                            _put(f, f"{group}/{path}", self.value_records, array)
                found = self._nonfinite(stats)
                if found is not None and self.first_nonfinite is None:
                    self.first_nonfinite = (step, *found)
                    f.attrs["first_nonfinite_step"] = int(step)
                    f.attrs["first_nonfinite_layer"] = found[0]
                    f.attrs["first_nonfinite_group"] = "gradients" if found[1] else "activations"
                if keep_values:
                    self.value_records += 1
                elif self.values_on and values is not None:  # past max_bytes: values stop, statistics go on
                    self.values_on = False
                    f.attrs["values_stopped"] = (f"values stopped before step {step}: storing them would pass "
                                                 f"max_bytes={self.max_bytes}; statistics go on")
                _put(f, "steps", n, int(step))  # last: /steps counts the whole records
        except OSError as e:
            raise WriteError(f"{self.option} '{self.output}': write failed: {e}") from e
        self.records += 1
        self.last_step = int(step)
        return found

    def _values_fit(self, values):
        if self.max_bytes is None:
            return True
        held = self.value_records * sum(a.nbytes for v in values.values() for a in v.values())
        return held + sum(a.nbytes for v in values.values() for a in v.values()) <= self.max_bytes

    def _nonfinite(self, stats):
        """(layer path, is_gradient) of the first layer, in model order, with a NaN or Inf."""
        nan, inf = STATS.index("nan_count"), STATS.index("inf_count")
        for path, *_ in self.layers:
            for prefix, figures in stats[path].items():
                if figures[nan] or figures[inf]:
                    return path, bool(prefix)
        return None

    def finish(self, status):
        """Record how training ended: "finished", "stopped: ...", "failed: ..."."""
        with self._open("a") as f:
            f.attrs["status"] = status


def _put(f, name, row, value):
    """Write row `row` of the dataset `name` of file `f`, growing it to hold it. h5py's
    low-level calls: indexing a Dataset costs 8 times as much, which at some 40 datasets a
    record was most of a record's time."""
    ds = h5py.h5d.open(f.id, name.encode("utf-8"))
    shape = ds.shape
    if shape[0] < row + 1:
        ds.set_extent((row + 1, *shape[1:]))
    target = ds.get_space()
    target.select_hyperslab((row, *(0 for _ in shape[1:])), (1, *shape[1:]))
    array = np.ascontiguousarray(np.asarray(value, dtype=ds.dtype).reshape((1, *shape[1:])))
    ds.write(h5py.h5s.create_simple(array.shape), target, array)


def options_text(options):
    return json.dumps(options, sort_keys=True)


# ---- reading -------------------------------------------------------------------------------

def check(f, path):
    """A training file's layout as a reader needs it: /steps, and every series at least as
    long as /steps (a record cut short leaves one more row, which readers leave out)."""
    steps = f.get("steps")
    if not isinstance(steps, h5py.Dataset) or steps.ndim != 1 or steps.dtype.kind not in "iu":
        raise DumpReadError(f"'{path}' is a damaged training file: it has no /steps list of integers")
    n = steps.shape[0]
    stats = f.get("stats")
    if not isinstance(stats, h5py.Group):
        raise DumpReadError(f"'{path}' is a damaged training file: it has no /stats group")
    for name, ds in series(f):
        if ds.shape[0] < n:
            raise DumpReadError(f"'{path}' is a damaged training file: /{name} holds {ds.shape[0]} rows, "
                                f"/steps {n}")


def series(f):
    """(HDF5 path, dataset) of every per-step dataset under /stats and /histograms."""
    found = []
    for top in ("stats", "histograms"):
        if top in f:
            f[top].visititems(lambda name, obj, top=top: found.append((f"{top}/{name}", obj))
                              if isinstance(obj, h5py.Dataset) else None)
    return found


def layer_groups(f):
    """[(layer path, /stats group)] in model order."""
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "order" in obj.attrs:
            found.append((name, obj))

    f["stats"].visititems(visit)
    return sorted(found, key=lambda item: (int(item[1].attrs["order"]), item[0]))


def read_summary(f):
    """What `summary` shows of a training file (store.read_summary adds the root attributes):
    the steps recorded, each layer's statistics at the last step (`last`, its gradient's
    `gradient_last`), and every dataset."""
    n = f["steps"].shape[0]
    steps = [int(s) for s in f["steps"][:n]]
    layers = []
    for path, group in layer_groups(f):
        record = {"name": path, "layer": _text(group.attrs.get("layer", path)),
                  "layer_class": _text(group.attrs.get("layer_class", "")),
                  "sample_shape": [int(d) for d in group.attrs.get("sample_shape", [])],
                  "dtype": _text(group.attrs.get("dtype", ""))}
        for prefix, key in (("", "last"), (GRADIENT, "gradient_last")):
            if f"{prefix}mean" in group:
                record[key] = {stat: _last(group[prefix + stat], n) for stat in STATS}
        layers.append(record)
    datasets = []
    f.visititems(lambda name, obj: datasets.append({"name": name, "shape": list(obj.shape), "dtype": str(obj.dtype)})
                 if isinstance(obj, h5py.Dataset) else None)
    return {"kind": KIND, "steps": n, "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None, "statistics": layers, "datasets": datasets}


def _last(ds, n):
    if not n:
        return None
    value = float(ds[n - 1])
    return int(value) if value.is_integer() and ds.name.endswith("_count") else value


def _text(value):
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else str(value)
