"""Exact running statistics of an array seen batch by batch (pure NumPy)."""

import numpy as np


class RunningStats:
    """min, max, mean and std (ddof 0) over the finite values, with zeros, NaN and Inf counted.

    Batches are combined with Chan et al.'s parallel update of (count, mean, M2), in float64,
    so the result does not depend on the batch size beyond rounding.
    """

    def __init__(self):
        self.size = 0  # every element seen
        self.count = 0  # finite elements
        self.mean = 0.0
        self.m2 = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.zeros = 0
        self.nan_count = 0
        self.inf_count = 0

    def update(self, batch):
        a = np.asarray(batch)
        self.size += a.size
        self.zeros += int(np.count_nonzero(a == 0))
        if a.dtype.kind in "fc":
            nan = int(np.count_nonzero(np.isnan(a)))
            inf = int(np.count_nonzero(np.isinf(a)))
            self.nan_count += nan
            self.inf_count += inf
            if nan or inf:
                a = a[np.isfinite(a)]
        values = a.astype(np.float64, copy=False).ravel()
        n = values.size
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(np.square(values - mean).sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def result(self):
        finite = self.count > 0
        return {
            "min": self.min if finite else float("nan"),
            "max": self.max if finite else float("nan"),
            "mean": self.mean if finite else float("nan"),
            "std": float(np.sqrt(self.m2 / self.count)) if finite else float("nan"),
            "zeros_fraction": self.zeros / self.size if self.size else float("nan"),
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
        }
