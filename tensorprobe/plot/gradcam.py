"""Grad-CAM (Selvaraju et al., 2017) from a dumped activation and its gradient (pure NumPy)."""

import numpy as np


def grad_cam(activation, gradient):
    """(map, weights) for one sample's activation and gradient, both (h, w, C): each channel's
    weight is the mean of its gradient over h and w, the map the ReLU of the weighted sum of
    the channel maps, shape (h, w)."""
    a = np.asarray(activation, dtype=np.float64)
    g = np.asarray(gradient, dtype=np.float64)
    weights = g.mean(axis=(0, 1))
    return np.maximum(a @ weights, 0.0), weights


def upsample(values, size):
    """Bilinear resize of a 2-D array to `size` (height, width), sampling at pixel centres as
    image libraries do (the edges repeat outwards)."""
    h, w = values.shape

    def axis(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, n_in - 1), pos - low

    y0, y1, fy = axis(size[0], h)
    x0, x1, fx = axis(size[1], w)
    top = values[y0][:, x0] * (1 - fx) + values[y0][:, x1] * fx
    bottom = values[y1][:, x0] * (1 - fx) + values[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]
