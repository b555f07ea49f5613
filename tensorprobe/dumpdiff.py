"""`tensorprobe diff`: compare two dumps dataset by dataset, a block of elements at a time
(whole rows when they fit, parts of one sample when it is larger), in bounded memory.

The rules, documented in the README (`tensorprobe diff`):
  - an element matches when both values are equal (NaN and NaN at the same place, or the same
    infinity, count as equal) or when both are finite and |a - b| <= atol + rtol * |b|, as
    numpy.allclose(a, b, rtol, atol, equal_nan=True) has it (b, from the second file, is the
    reference), computed in float64;
  - NaN on one side only, an infinity against anything but the same infinity: never a match;
    counted as `nonfinite_mismatches`, and the first of them is the worst element;
  - otherwise the worst element is the largest |a - b| (the first one on ties); the relative
    error is |a - b| / |b| over the finite pairs where b != 0;
  - strings (a string input layer, a StringLookup's tokens) match when equal byte for byte;
    their rows give counts only (outside_tolerance: the unequal ones), no error;
  - a dataset differs when its shape or dtype differs, or when any element does not match;
  - datasets in one file only are listed, and make the files differ;
  - /inputs/source (where each row came from) is compared and reported, never a failure.
"""


import h5py
import numpy as np

from tensorprobe import errors, store
from tensorprobe.text import regex
from tensorprobe.errors import DumpReadError, UsageError

BLOCK_BYTES = 4 << 20  # float64 bytes per side per block, however large a sample; the memory bound


class RunningDiff:
    """The element-wise comparison of two same-shaped numeric arrays fed block by block along
    the first axis (pure NumPy, float64)."""

    def __init__(self, shape, rtol, atol):
        self.shape, self.rtol, self.atol = tuple(shape), rtol, atol
        self.size = 0
        self.outside = 0
        self.nonfinite = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.worst = None  # (flat index, a, b)

    def update(self, a, b, start_row=0, offset=None):
        """Compare a block: rows start_row... of both arrays, or, with `offset`, the elements
        from that flat (C-order) index on (a block of store.element_blocks)."""
        if offset is None:
            offset = start_row * int(np.prod(self.shape[1:], dtype=np.int64)) if self.shape else 0
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        self.size += a.size
        if not a.size:
            return
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(a) & np.isfinite(b)
            equal = (a == b) | (np.isnan(a) & np.isnan(b))
            err = np.where(finite, np.abs(a - b), 0.0)
            close = finite & (err <= self.atol + self.rtol * np.abs(b))
            rel = np.divide(err, np.abs(b), out=np.zeros_like(err), where=finite & (b != 0))
        self.outside += a.size - int(np.count_nonzero(equal | close))
        self.max_rel = max(self.max_rel, float(rel.max()))
        nonfinite = ~(finite | equal)
        count = int(np.count_nonzero(nonfinite))
        if count and not self.nonfinite:  # the first non-finite mismatch is the worst element
            i = int(np.argmax(nonfinite))
            self.worst = (offset + i, a[i], b[i])
        self.nonfinite += count
        i = int(np.argmax(err))
        if err[i] > self.max_abs:
            self.max_abs = float(err[i])
            if not self.nonfinite:
                self.worst = (offset + i, a[i], b[i])

    def result(self):
        worst = None
        if self.worst is not None:
            flat, a, b = self.worst
            index = np.unravel_index(flat, self.shape) if self.shape else ()
            worst = {
                "sample": int(index[0]) if index else None,
                "position": [int(i) for i in index[1:]],
                "a": _value(a),
                "b": _value(b),
            }
        return {
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "outside_tolerance": self.outside,
            "outside_fraction": self.outside / self.size if self.size else 0.0,
            "nonfinite_mismatches": self.nonfinite,
            "worst": worst,
        }


class StringDiff:
    """RunningDiff's counterpart for string datasets: an element matches when both strings
    are equal (byte for byte); the worst element is the first unequal one; there is no
    error to measure (max_abs_error and max_rel_error are None)."""

    def __init__(self, shape, rtol=None, atol=None):
        self.shape = tuple(shape)
        self.size = 0
        self.unequal = 0
        self.worst = None  # (flat index, a, b)

    def update(self, a, b, start_row=0, offset=None):
        if offset is None:
            offset = start_row * int(np.prod(self.shape[1:], dtype=np.int64)) if self.shape else 0
        a, b = np.asarray(a, dtype=object).ravel(), np.asarray(b, dtype=object).ravel()
        self.size += a.size
        unequal = np.flatnonzero([x != y for x, y in zip(_bytes(a), _bytes(b))])
        if unequal.size and self.worst is None:
            i = int(unequal[0])
            self.worst = (offset + i, a[i], b[i])
        self.unequal += int(unequal.size)

    def result(self):
        worst = None
        if self.worst is not None:
            flat, a, b = self.worst
            index = np.unravel_index(flat, self.shape) if self.shape else ()
            worst = {"sample": int(index[0]) if index else None, "position": [int(i) for i in index[1:]],
                     "a": _value(a), "b": _value(b)}
        return {
            "max_abs_error": None,
            "max_rel_error": None,
            "outside_tolerance": self.unequal,
            "outside_fraction": self.unequal / self.size if self.size else 0.0,
            "nonfinite_mismatches": 0,
            "worst": worst,
        }


def _bytes(values):
    """Strings as UTF-8 bytes (h5py reads a variable-length string as bytes, a str when one
    was written so)."""
    return [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in values]


def diff_dumps(path_a, path_b, rtol=1e-5, atol=1e-8, only=None, allow_incomplete=False):
    """Compare two dumps; a plain dict for report.diff_table / diff_json."""
    pattern = regex(only, "only")
    with store.open_dump(path_a, allow_incomplete) as fa, store.open_dump(path_b, allow_incomplete) as fb:
        with store.reading(path_a):
            records_a, attrs_a = store.datasets(fa, all_attributes=False), store.root_attrs(fa)
        with store.reading(path_b):
            records_b, attrs_b = store.datasets(fb, all_attributes=False), store.root_attrs(fb)
        by_name_a = {r["name"]: r for r in records_a}
        by_name_b = {r["name"]: r for r in records_b}
        names = list(by_name_a) + [n for n in by_name_b if n not in by_name_a]
        if pattern is not None:
            names = [n for n in names if pattern.search(n)]
            if not names:
                raise UsageError(f"{errors.name('only')} '{only}' matches no dataset in '{path_a}' or '{path_b}'",
                                 argument="only")
        rows = []
        for name in names:
            ra, rb = by_name_a.get(name), by_name_b.get(name)
            if rb is None:
                rows.append(_one_side(name, ra, "only_a"))
            elif ra is None:
                rows.append(_one_side(name, rb, "only_b"))
            else:
                rows.append(_compare(name, ra, rb, fa, fb, path_a, path_b, rtol, atol))
        inputs = _compare_sources(fa, fb, path_a, path_b)
    differing = [r["name"] for r in rows if r["status"] in ("values", "shape", "dtype")]
    return {
        "a": str(path_a),
        "b": str(path_b),
        "rtol": rtol,
        "atol": atol,
        "only": only,
        "match": all(r["status"] == "match" for r in rows),
        "first_difference": differing[0] if differing else None,
        "compared": sum(r["status"] not in ("only_a", "only_b") for r in rows),
        "differing": len(differing),
        "only_in_a": [r["name"] for r in rows if r["status"] == "only_a"],
        "only_in_b": [r["name"] for r in rows if r["status"] == "only_b"],
        "complete": {"a": store.is_complete(attrs_a), "b": store.is_complete(attrs_b)},
        "inputs": inputs,
        "datasets": rows,
    }




def _one_side(name, record, status):
    return {
        "name": name, "group": record["group"], "path": record["path"], "status": status,
        "shape_a": _shape(record) if status == "only_a" else None,
        "shape_b": _shape(record) if status == "only_b" else None,
        "dtype_a": record["dtype"] if status == "only_a" else None,
        "dtype_b": record["dtype"] if status == "only_b" else None,
    }


def _shape(record):
    return [record["samples"], *record["sample_shape"]]


def _compare(name, ra, rb, fa, fb, path_a, path_b, rtol, atol):
    row = {
        "name": name, "group": ra["group"], "path": ra["path"], "status": "match",
        "shape_a": _shape(ra), "shape_b": _shape(rb), "dtype_a": ra["dtype"], "dtype_b": rb["dtype"],
    }
    if row["shape_a"] != row["shape_b"]:
        row["status"] = "shape"
        return row
    with store.reading(path_a):
        ds_a = store.checked(fa[ra["group"]][ra["path"]])
    with store.reading(path_b):
        ds_b = store.checked(fb[rb["group"]][rb["path"]])
    for ds, path in ((ds_a, path_a), (ds_b, path_b)):
        if ds.dtype.kind not in "biuf" and not store.is_string(ds.dtype):  # never written by tensorprobe
            raise DumpReadError(f"'{path}': dataset '{ds.name}' has dtype {ds.dtype}; diff compares numbers "
                                "and strings only")
    if store.is_string(ds_a.dtype) != store.is_string(ds_b.dtype):
        row["status"] = "dtype"  # strings against numbers: no value to compare
        return row
    running = (StringDiff if store.is_string(ds_a.dtype) else RunningDiff)(ds_a.shape, rtol, atol)
    for key, offset in store.element_blocks(ds_a, BLOCK_BYTES // 8):
        with store.reading(path_a):
            a = ds_a[key]
        with store.reading(path_b):
            b = ds_b[key]
        running.update(np.asarray(a), np.asarray(b), offset=offset)
    row.update(running.result())
    if row["dtype_a"] != row["dtype_b"]:
        row["status"] = "dtype"
    elif row["outside_tolerance"]:
        row["status"] = "values"
    return row


def _compare_sources(fa, fb, path_a, path_b, block=1 << 16):
    """Whether both dumps were computed from the same inputs, as /inputs/source names them."""
    with store.reading(path_a):
        sa = _sources(fa)
    with store.reading(path_b):
        sb = _sources(fb)
    rows_a, rows_b = (0 if s is None else s.shape[0] for s in (sa, sb))
    first = None
    common = min(rows_a, rows_b)
    for start in range(0, common, block):
        stop = min(common, start + block)
        with store.reading(path_a):
            a = sa.asstr()[start:stop]
        with store.reading(path_b):
            b = sb.asstr()[start:stop]
        unequal = np.flatnonzero(a != b)
        if unequal.size:
            i = int(unequal[0])
            first = {"row": start + i, "a": str(a[i]), "b": str(b[i])}
            break
    return {"same": first is None and rows_a == rows_b, "rows_a": rows_a, "rows_b": rows_b,
            "first_difference": first}


def _sources(f):
    ds = f.get(f"{store.INPUTS}/source")
    if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and h5py.check_string_dtype(ds.dtype):
        return store.checked(ds)
    return None


def _value(v):
    v = v.item() if isinstance(v, np.generic) else v
    return v.decode(errors="replace") if isinstance(v, bytes) else v
