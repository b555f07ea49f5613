"""A histogram of every value of a dataset, read in blocks of bounded size (pure NumPy)."""

from dataclasses import dataclass

import numpy as np


@dataclass
class Histogram:
    edges: np.ndarray  # bins+1 edges over [low, high]
    counts: np.ndarray  # finite values that are not exact zeros nor piled up at low or high
    zeros: int  # values exactly 0
    low: float  # the smallest and largest finite values
    high: float
    at_low: int  # values equal to low when low != 0 and it occurs more than once (a pile-up)
    at_high: int  # the same at high
    nan_count: int
    inf_count: int
    total: int  # every value, NaN and Inf included


def histogram(blocks, bins):
    """Two passes over `blocks()` (a callable returning an iterator of arrays): the range, then
    the counts. Memory stays at one block whatever the dataset's size."""
    low, high, nans, infs, total = np.inf, -np.inf, 0, 0, 0
    for block in blocks():
        values = np.asarray(block).ravel()
        total += values.size
        finite = np.isfinite(values)
        if not finite.all():
            nans += int(np.isnan(values).sum())
            infs += int(np.isinf(values).sum())
            values = values[finite]
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    if low > high:  # no finite value at all
        low = high = 0.0
    span = (low - 0.5, high + 0.5) if low == high else (low, high)
    counts = np.zeros(bins, np.int64)
    zeros = at_low = at_high = 0
    for block in blocks():
        values = np.asarray(block).ravel()
        values = values[np.isfinite(values)].astype(np.float64)
        is_zero = values == 0
        zeros += int(is_zero.sum())
        at_low += int(((values == low) & ~is_zero).sum())
        at_high += int(((values == high) & ~is_zero).sum()) if high != low else 0
        counts += np.histogram(values, bins=bins, range=span)[0]
    edges = np.linspace(span[0], span[1], bins + 1)
    # Extremes seen once are ordinary values; seen more often they are a pile-up (clipping,
    # saturated units) and are drawn apart, like the zeros.
    pile_low, pile_high = at_low if at_low > 1 else 0, at_high if at_high > 1 else 0
    counts -= _bin_counts(edges, span, zeros, 0.0) + _bin_counts(edges, span, pile_low, low) \
        + _bin_counts(edges, span, pile_high, high)
    return Histogram(edges, counts, zeros, low, high, pile_low, pile_high, nans, infs, total)


def _bin_counts(edges, span, count, value):
    """`count` copies of `value` as np.histogram bins them (0 when value is out of range)."""
    return np.histogram([value], bins=len(edges) - 1, range=span)[0] * count
