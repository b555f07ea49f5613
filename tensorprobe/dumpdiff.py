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

Error statistics (`error_stat`, Polygraphy's --check-error-stat, defined as its
CompareFunc.simple has it): `elemwise` is the rule above. `max`, `mean`, `median` and
`quantile:Q` take that statistic, over the finite pairs of elements, of the absolute error
|a - b| and of the relative error |a - b| / |b| (a b of 0 counted as 2.2e-16, float64's
epsilon, as Polygraphy does), and a dataset is within tolerance when the absolute one is
<= atol OR the relative one is <= rtol (and no element is a non-finite mismatch). The
median and quantiles (numpy.quantile's linear rule) are exact: they keep every error value,
up to STAT_ELEMENTS of them per comparison, and refuse more with an error naming the dataset.
Tolerances per dataset (`Tolerances`): GLOB=VALUE rules (fnmatch, case-sensitive, on the
dataset's path; the first match wins), a plain number the default.
"""

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass


import h5py
import numpy as np

from tensorprobe import errors, store
from tensorprobe.text import regex
from tensorprobe.errors import DumpReadError, TensorprobeError, UsageError

BLOCK_BYTES = 4 << 20  # float64 bytes per side per block, however large a sample; the memory bound
RTOL, ATOL = 1e-5, 1e-8  # numpy.allclose's
STAT_ELEMENTS = 1 << 23  # error values medians/quantiles keep, in all (absolute and relative, float64: 64 MiB)
EPSILON = float(np.finfo(np.float64).eps)  # |b| where b is 0, in the relative error of a statistic
ERROR_STATS = ("elemwise", "max", "mean", "median", "quantile")


def tolerance(value, argument):
    """An rtol/atol value (`argument`, errors.name: --rtol in the CLI): a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{errors.name(argument)} {value!r}: expected a finite number >= 0", argument=argument)
    return float(value)


@dataclass(frozen=True)
class ErrorStat:
    """What the tolerances are applied to (see the module's docstring)."""

    kind: str = "elemwise"
    q: float | None = None  # quantile's

    def __str__(self):
        return f"quantile:{self.q:g}" if self.kind == "quantile" else self.kind

    @property
    def keeps_values(self):
        return self.kind in ("median", "quantile")

    def of(self, values):
        """The statistic of an array of error values (0 for none)."""
        if not values.size:
            return 0.0
        if self.kind == "max":
            return float(values.max())
        if self.kind == "mean":
            return float(values.mean())
        if self.kind == "median":
            return float(np.median(values))
        return float(np.quantile(values, self.q))


ELEMWISE = ErrorStat()


def parse_error_stat(text, argument="error_stat"):
    """'elemwise', 'max', 'mean', 'median' or 'quantile:Q' (0 <= Q <= 1) -> ErrorStat."""
    if isinstance(text, ErrorStat):
        return text
    expected = "expected elemwise, max, mean, median or quantile:Q (e.g. quantile:0.99)"
    if not isinstance(text, str):
        raise UsageError(f"{errors.name(argument)} {text!r}: {expected}", argument=argument)
    kind, colon, number = text.strip().partition(":")
    if kind not in ERROR_STATS or bool(colon) != (kind == "quantile"):
        raise UsageError(f"{errors.name(argument)} '{text}': {expected}", argument=argument)
    if kind != "quantile":
        return ErrorStat(kind)
    try:
        q = float(number)
    except ValueError:
        q = math.nan
    if not 0 <= q <= 1:  # NaN too
        raise UsageError(f"{errors.name(argument)} '{text}': the quantile lies in [0, 1]", argument=argument)
    return ErrorStat("quantile", q)


def tolerance_rules(value, argument):
    """(the default or None, ((glob, value), ...)) from an rtol/atol argument: None, a
    number, 'GLOB=VALUE' or '1e-4', a {glob: value} mapping ('' the default, as Polygraphy's
    dictionaries), or a sequence of those strings and numbers."""
    if value is None:
        return None, ()
    if isinstance(value, Mapping):
        items = [(str(glob), number) for glob, number in value.items()]
    else:
        items = [(None, v) for v in ([value] if isinstance(value, (str, int, float)) else value)]
    default, rules = None, []
    for glob, number in items:
        text = number
        if glob is None and isinstance(number, str):
            glob, sep, text = number.strip().rpartition("=")
            glob = glob if sep else None
            try:
                number = float(text)
            except ValueError:
                raise UsageError(f"{errors.name(argument)} '{value if isinstance(value, str) else text}': "
                                 "expected a number or GLOB=NUMBER", argument=argument) from None
        number = tolerance(number, argument)
        if glob is None or (glob == "" and isinstance(value, Mapping)):
            if default is not None:
                raise UsageError(f"{errors.name(argument)} has two defaults ({default:g} and {number:g}): "
                                 "give one plain number", argument=argument)
            default = number
        elif not glob:
            raise UsageError(f"{errors.name(argument)} '={text}': the glob before '=' is empty", argument=argument)
        else:
            rules.append((glob, number))
    return default, tuple(rules)


@dataclass(frozen=True)
class Tolerances:
    """rtol and atol per dataset path (first matching rule, else the default) and the error
    statistic they are applied to."""

    rtol: float = RTOL
    atol: float = ATOL
    rtol_rules: tuple = ()
    atol_rules: tuple = ()
    stat: ErrorStat = ELEMWISE

    @classmethod
    def parse(cls, rtol=None, atol=None, error_stat=None, default_rtol=RTOL, default_atol=ATOL):
        rtol, rtol_rules = tolerance_rules(rtol, "rtol")
        atol, atol_rules = tolerance_rules(atol, "atol")
        stat = ELEMWISE if error_stat is None else parse_error_stat(error_stat)
        return cls(default_rtol if rtol is None else rtol, default_atol if atol is None else atol,
                   rtol_rules, atol_rules, stat)

    @property
    def custom(self):
        """Whether rules or a statistic were given (what --json then shows per dataset)."""
        return bool(self.rtol_rules or self.atol_rules) or self.stat != ELEMWISE

    def at(self, path):
        """(rtol, atol) for the dataset `path`."""
        def first(rules, default):
            return next((v for glob, v in rules if fnmatch.fnmatchcase(path, glob)), default)

        return first(self.rtol_rules, self.rtol), first(self.atol_rules, self.atol)

    def running(self, kind, shape, path, budget=None):
        """A RunningDiff (or a subclass, `kind`) for the dataset `path`."""
        rtol, atol = self.at(path)
        return kind(shape, rtol, atol, stat=self.stat, budget=budget, path=path)

    def summary(self):
        """What the result says of the rules (only when `custom`)."""
        return {"error_stat": str(self.stat),
                "rtol_rules": [f"{g}={v:g}" for g, v in self.rtol_rules],
                "atol_rules": [f"{g}={v:g}" for g, v in self.atol_rules]}

    def describe(self):
        rules = [f"--rtol {g}={v:g}" for g, v in self.rtol_rules] + [f"--atol {g}={v:g}" for g, v in self.atol_rules]
        return ", ".join([f"{self.stat} error", *rules])


class ValueBudget:
    """How many error values the medians and quantiles of one comparison may still keep."""

    def __init__(self, limit=None):
        self.limit = STAT_ELEMENTS if limit is None else limit
        self.left = self.limit

    def take(self, count, path, stat):
        self.left -= count
        if self.left < 0:
            raise TensorprobeError(
                f"{errors.name('error_stat')} {stat} keeps every error value to be exact, and '{path}' passes "
                f"the {self.limit:,} values it may keep in all: compare fewer inputs or layers, or use "
                "max or mean (which keep none)")


class RunningDiff:
    """The element-wise comparison of two same-shaped numeric arrays fed block by block along
    the first axis (pure NumPy, float64)."""

    def __init__(self, shape, rtol, atol, stat=None, budget=None, path=None):
        self.shape, self.rtol, self.atol = tuple(shape), rtol, atol
        self.stat, self.path = stat or ELEMWISE, path
        self.budget = budget if budget is not None or not self.stat.keeps_values else ValueBudget()
        self.stat_count, self.stat_sums, self.stat_max_rel = 0, [0.0, 0.0], 0.0
        self.stat_values = ([], [])  # median/quantile: every finite pair's absolute and relative error
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
        if self.stat != ELEMWISE:
            self._gather(err[finite], np.abs(b[finite]))
        i = int(np.argmax(err))
        if err[i] > self.max_abs:
            self.max_abs = float(err[i])
            if not self.nonfinite:
                self.worst = (offset + i, a[i], b[i])

    def _gather(self, err, scale):
        """The statistic's share of a block: the finite pairs' absolute errors and |b|."""
        rel = err / np.where(scale == 0, EPSILON, scale)
        self.stat_count += err.size
        if self.stat.kind == "mean":
            self.stat_sums[0] += float(err.sum())
            self.stat_sums[1] += float(rel.sum())
        elif self.stat.kind == "max" and rel.size:
            self.stat_max_rel = max(self.stat_max_rel, float(rel.max()))
        elif self.stat.keeps_values:
            self.budget.take(2 * err.size, self.path, self.stat)
            self.stat_values[0].append(err)
            self.stat_values[1].append(rel)

    def statistic(self):
        """(the statistic of the absolute error, of the relative error) over the finite pairs."""
        if self.stat.kind == "mean":
            n = self.stat_count or 1
            return self.stat_sums[0] / n, self.stat_sums[1] / n
        if self.stat.kind == "max":
            return self.max_abs, self.stat_max_rel
        return tuple(self.stat.of(np.concatenate(v) if v else np.zeros(0)) for v in self.stat_values)

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
        record = {
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "outside_tolerance": self.outside,
            "outside_fraction": self.outside / self.size if self.size else 0.0,
            "nonfinite_mismatches": self.nonfinite,
            "worst": worst,
        }
        if self.stat != ELEMWISE:  # Polygraphy's rule: either statistic within its tolerance
            abs_stat, rel_stat = self.statistic()
            record.update({"stat_abs_error": abs_stat, "stat_rel_error": rel_stat,
                           "within_stat": not self.nonfinite and (abs_stat <= self.atol or rel_stat <= self.rtol)})
        return record

    def within(self, record):
        """Whether the dataset is within tolerance by the error statistic (`record`: result())."""
        if self.stat == ELEMWISE:
            return record["outside_tolerance"] == 0
        return record["within_stat"]


class StringDiff:
    """RunningDiff's counterpart for string datasets: an element matches when both strings
    are equal (byte for byte); the worst element is the first unequal one; there is no
    error to measure (max_abs_error and max_rel_error are None)."""

    def __init__(self, shape, rtol=None, atol=None, stat=None, budget=None, path=None):
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

    def within(self, record):
        return record["outside_tolerance"] == 0


def _bytes(values):
    """Strings as UTF-8 bytes (h5py reads a variable-length string as bytes, a str when one
    was written so)."""
    return [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in values]


def diff_dumps(path_a, path_b, rtol=RTOL, atol=ATOL, only=None, allow_incomplete=False, error_stat=None):
    """Compare two dumps; a plain dict for report.diff_table / diff_json. `rtol`/`atol`: a
    number or rules (tolerance_rules); `error_stat`: what they apply to (parse_error_stat)."""
    tolerances = Tolerances.parse(rtol, atol, error_stat)
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
                rows.append(_compare(name, ra, rb, fa, fb, path_a, path_b, tolerances))
        inputs = _compare_sources(fa, fb, path_a, path_b)
    differing = [r["name"] for r in rows if r["status"] in ("values", "shape", "dtype")]
    return {
        "a": str(path_a),
        "b": str(path_b),
        "rtol": tolerances.rtol,
        "atol": tolerances.atol,
        **(tolerances.summary() if tolerances.custom else {}),
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


def _compare(name, ra, rb, fa, fb, path_a, path_b, tolerances):
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
    running = tolerances.running(StringDiff if store.is_string(ds_a.dtype) else RunningDiff, ds_a.shape, name)
    if tolerances.custom:
        rtol, atol = tolerances.at(name)
        row.update({"error_stat": str(tolerances.stat), "rtol": rtol, "atol": atol})
    for key, offset in store.element_blocks(ds_a, BLOCK_BYTES // 8):
        with store.reading(path_a):
            a = ds_a[key]
        with store.reading(path_b):
            b = ds_b[key]
        running.update(np.asarray(a), np.asarray(b), offset=offset)
    row.update(running.result())
    within = running.within(row)
    row.pop("within_stat", None)
    if row["dtype_a"] != row["dtype_b"]:
        row["status"] = "dtype"
    elif not within:
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
