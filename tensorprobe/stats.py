"""Exact running statistics of an array seen batch by batch (pure NumPy)."""

import numpy as np


class RunningStats:
    """Statistics over the finite values of an array seen a batch at a time: min, max, mean,
    std (ddof 0), overall and per channel (the last axis), with zeros, NaN and Inf counted.

    Each batch yields per-channel (count, mean, M2), combined with the earlier ones by Chan et
    al.'s parallel update in float64; the overall figures combine the channels the same way.
    So the result is exact up to rounding and does not depend on the batch size.

    min and max keep the data's own type for integer and bool data (an int64 or uint64
    extreme is exact, not rounded to a float64); floating-point data has them in float64.
    """

    def __init__(self):
        self.size = 0  # every element seen
        self.rows = 0
        self.zeros = 0
        self.nan_count = 0
        self.inf_count = 0
        self.first_nonfinite_row = None
        self.count = self.mean = self.m2 = self.min = self.max = None  # per channel

    def update(self, batch, block_bytes=16 << 20):
        """Add a batch (first axis: samples). Large batches are taken a few rows at a time, so
        the float64 temporaries stay small whatever the batch size."""
        a = np.asarray(batch)
        if a.ndim == 0:
            self._update(a)
            return
        row_bytes = max(1, a[:1].size * 8)  # one row as float64
        step = max(1, block_bytes // row_bytes)
        for start in range(0, len(a), step):
            self._update(a[start:start + step])

    def _update(self, batch):
        a = np.asarray(batch)
        channels = a.shape[-1] if a.ndim >= 2 else 1
        flat = a.reshape(-1, channels)
        if self.count is None:
            self.count = np.zeros(channels, np.int64)
            self.mean = np.zeros(channels)
            self.m2 = np.zeros(channels)
            self.min, self.max = _empty_extremes(a.dtype, channels)
        self.size += a.size
        self.zeros += int(np.count_nonzero(a == 0))
        finite = None
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            finite = np.isfinite(flat)
            self.nan_count += int(np.count_nonzero(np.isnan(a)))
            self.inf_count += int(np.count_nonzero(np.isinf(a)))
            if self.first_nonfinite_row is None:
                bad_rows = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
                self.first_nonfinite_row = self.rows + int(np.flatnonzero(bad_rows)[0])
        self.rows += len(a)
        if not flat.shape[0]:  # a sample shape with a zero in it: no value at all
            return
        if finite is None:
            n = np.full(channels, flat.shape[0], np.int64)
            mean = flat.mean(axis=0, dtype=np.float64)
            m2 = np.square(flat.astype(np.float64) - mean).sum(axis=0)
            low, high = flat.min(axis=0), flat.max(axis=0)
        else:
            n = finite.sum(axis=0)
            values = np.where(finite, flat, 0).astype(np.float64)
            mean = values.sum(axis=0) / np.maximum(n, 1)
            m2 = np.where(finite, np.square(values - mean), 0).sum(axis=0)
            low = np.where(finite, flat, np.inf).min(axis=0)
            high = np.where(finite, flat, -np.inf).max(axis=0)
        self.min = np.minimum(self.min, low.astype(self.min.dtype))
        self.max = np.maximum(self.max, high.astype(self.max.dtype))
        self.count, self.mean, self.m2 = _combine(self.count, self.mean, self.m2, n, mean, m2)

    @classmethod
    def from_attrs(cls, attrs, rows, sample_shape):
        """The state a dump's statistics attributes (result() and channel_result() as written,
        plus channel_count where values were not finite) describe, for `rows` rows of
        `sample_shape`: what `merge` combines. Exact but for the rounding of std -> M2."""
        st = cls()
        st.rows = int(rows)
        st.size = st.rows * int(np.prod(sample_shape, dtype=np.int64))
        st.nan_count, st.inf_count = int(attrs["nan_count"]), int(attrs["inf_count"])
        st.first_nonfinite_row = attrs.get("first_nonfinite_sample")
        if not st.size:
            return st
        st.zeros = int(round(float(attrs["zeros_fraction"]) * st.size))
        per_channel = len(sample_shape) >= 1 and "channel_mean" in attrs
        prefix = "channel_" if per_channel else ""
        channels = sample_shape[-1] if per_channel else 1
        if "channel_count" in attrs:
            st.count = np.asarray(attrs["channel_count"], np.int64).reshape(channels)
        else:  # every value finite: each channel saw the same number
            if st.nan_count or st.inf_count:
                raise ValueError("non-finite values but no channel_count attribute")
            st.count = np.full(channels, st.size // channels, np.int64)
        seen = st.count > 0

        def get(key, missing):
            return np.where(seen, np.asarray(attrs[prefix + key], np.float64).reshape(channels), missing)

        st.mean = get("mean", 0.0)
        st.m2 = np.square(get("std", 0.0)) * st.count
        st.min = _extreme(attrs[prefix + "min"], channels, seen, np.inf)
        st.max = _extreme(attrs[prefix + "max"], channels, seen, -np.inf)
        return st

    def merge(self, other):
        """Add the statistics of `other`, whose rows come after this one's (Chan et al.)."""
        if other.first_nonfinite_row is not None and self.first_nonfinite_row is None:
            self.first_nonfinite_row = self.rows + int(other.first_nonfinite_row)
        self.size += other.size
        self.rows += other.rows
        self.zeros += other.zeros
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count
        if other.count is None:
            return self
        if self.count is None:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max = other.min, other.max
            return self
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.count, self.mean, self.m2 = _combine(self.count, self.mean, self.m2,
                                                  other.count, other.mean, other.m2)
        return self

    def result(self):
        """Overall statistics; NaN where no finite value was seen."""
        nan = float("nan")
        total = int(self.count.sum()) if self.count is not None else 0
        if total:
            (count,), (mean,), (m2,) = _combine_all(self.count, self.mean, self.m2)
            overall = {
                "min": _scalar(self.min[self.count > 0].min()),
                "max": _scalar(self.max[self.count > 0].max()),
                "mean": float(mean),
                "std": float(np.sqrt(m2 / count)),
            }
        else:
            overall = dict.fromkeys(("min", "max", "mean", "std"), nan)
        return {
            **overall,
            "zeros_fraction": self.zeros / self.size if self.size else nan,
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
        }

    def channel_result(self):
        """Per-channel min, max, mean, std (NaN for a channel without finite values)."""
        seen = self.count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "channel_min": self.min if seen.all() else np.where(seen, self.min, np.nan),
                "channel_max": self.max if seen.all() else np.where(seen, self.max, np.nan),
                "channel_mean": np.where(seen, self.mean, np.nan),
                "channel_std": np.where(seen, np.sqrt(self.m2 / self.count), np.nan),
            }


def _empty_extremes(dtype, channels):
    """(min, max) before any value: the largest and smallest values of the type the extremes
    are kept in (the data's own for integer and bool data, float64 otherwise)."""
    if dtype.kind == "b":
        return np.ones(channels, bool), np.zeros(channels, bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.full(channels, info.max, dtype), np.full(channels, info.min, dtype)
    return np.full(channels, np.inf), np.full(channels, -np.inf)


def _extreme(stored, channels, seen, missing):
    """A min or max attribute as write_stats writes it: in its own type when it is an integer
    or bool (exact), else in float64 with `missing` for a channel without finite values."""
    values = np.asarray(stored).reshape(channels)
    if values.dtype.kind in "biu":
        return values
    return np.where(seen, values.astype(np.float64), missing)


def _scalar(value):
    """The overall min or max: a NumPy scalar of the data's type for integer and bool data
    (written as an attribute of that type, read back as an exact Python int), else a float."""
    return value if value.dtype.kind in "biu" else float(value)


def _combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: (count, mean, M2) of two parts -> of their union, element-wise."""
    n = n_a + n_b
    safe = np.maximum(n, 1)
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / safe
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / safe
    return n, mean, m2


def _combine_all(count, mean, m2):
    """Combine every channel's (count, mean, M2) into one."""
    n = count.sum()
    overall = (count * mean).sum() / n
    return [n], [overall], [m2.sum() + (count * np.square(mean - overall)).sum()]


# ---- non-finite counts per sample, for `nanhunt` (numerics.py) ----------------------------

COUNTS = ("nan", "posinf", "neginf")  # the columns of a count row


def count_rows(array):
    """(rows, 3) int64: the NaN, +Inf and -Inf counts of each sample (row) of `array`; zeros
    for values that hold none (integers, booleans, strings)."""
    array = np.asarray(array)
    rows = array.shape[0] if array.ndim else 1
    if array.dtype.kind not in "fc":
        return np.zeros((rows, 3), np.int64)
    flat = array.reshape(rows, -1)
    if flat.dtype.kind == "c":  # a complex value is non-finite where either part is
        flat = np.concatenate([flat.real, flat.imag], axis=1)
    return np.stack([np.isnan(flat).sum(axis=1), np.isposinf(flat).sum(axis=1), np.isneginf(flat).sum(axis=1)],
                    axis=1).astype(np.int64)


def counting(run):
    """A run function (batch list, labels) -> arrays, turned into one returning count_rows of
    each array: for runners that hand back the values themselves."""

    def counted(batch, labels=None):
        return [count_rows(a) for a in run(batch, labels)]

    return counted
