"""Input files -> batches of model inputs, read lazily (.npy files are memory-mapped)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorprobe.errors import InputError, UsageError


@dataclass
class InputSpec:
    """What the model takes: one sample's shape (None where any size goes) and dtype."""

    name: str
    shape: tuple
    dtype: str


@dataclass
class _Part:
    path: str
    array: np.ndarray  # (rows, *sample_shape), memory-mapped where possible
    single: bool  # the file held exactly one sample without a batch axis


class NpyInputs:
    """A sequence of .npy files concatenated along the batch axis.

    An array whose shape is the model's input shape without the batch axis is one sample;
    otherwise its first axis is the batch.
    """

    def __init__(self, paths, spec):
        self.spec = spec
        self.parts = [self._open(str(p)) for p in paths]
        self.rows = sum(len(p.array) for p in self.parts)

    def _open(self, path):
        if not Path(path).is_file():
            raise UsageError(f"input '{path}' does not exist")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "Python objects" in str(e):
                raise InputError(f"{path}: holds Python objects, which are never unpickled") from e
            raise InputError(f"{path}: not a readable .npy file ({e})") from e
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy file ({e})") from e
        if not isinstance(array, np.ndarray):
            raise InputError(f"{path}: expected one array in a .npy file")
        self._check_dtype(path, array.dtype)
        expected = self.spec.shape
        if _fits(array.shape, expected):
            return _Part(path, array[np.newaxis], True)
        if array.ndim == len(expected) + 1 and _fits(array.shape[1:], expected):
            if array.shape[0] == 0:
                raise InputError(f"{path}: holds no samples (shape {tuple(array.shape)})")
            return _Part(path, array, False)
        raise InputError(
            f"{path}: array of shape {tuple(array.shape)} does not fit input '{self.spec.name}': "
            f"expected {_shape_text(expected)} for one sample or {_shape_text(('N',) + tuple(expected))} "
            "for a batch"
        )

    def _check_dtype(self, path, dtype):
        target = np.dtype(self.spec.dtype)
        if dtype.kind not in "biuf":
            raise InputError(
                f"{path}: dtype {dtype} cannot be fed to input '{self.spec.name}' ({target}); "
                "expected a numeric array"
            )
        ok = target.kind == "f" or np.can_cast(dtype, target, casting="safe")
        if not ok:
            raise InputError(
                f"{path}: dtype {dtype} cannot be cast safely to input '{self.spec.name}' ({target})"
            )

    def batches(self, batch_size):
        """Yield (sources, array) with up to `batch_size` rows, across file boundaries."""
        target = np.dtype(self.spec.dtype)
        pending, sources, have = [], [], 0
        for part in self.parts:
            start = 0
            while start < len(part.array):
                take = min(batch_size - have, len(part.array) - start)
                rows = part.array[start : start + take]
                pending.append(rows)
                if part.single:
                    sources.append(part.path)
                else:
                    sources.extend(f"{part.path}[{i}]" for i in range(start, start + take))
                have += take
                start += take
                if have == batch_size:
                    yield sources, _stack(pending, target)
                    pending, sources, have = [], [], 0
        if have:
            yield sources, _stack(pending, target)


def _stack(arrays, dtype):
    if len(arrays) == 1:
        return np.array(arrays[0], dtype=dtype)  # copies out of the memory map
    return np.concatenate(arrays).astype(dtype, copy=False)


def _fits(shape, expected):
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _shape_text(shape):
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def open_labels(path, rows):
    """The --labels array (memory-mapped, pickles refused): one row per input sample."""
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"--labels '{path}': not a readable .npy file ({e})") from e
    if labels.dtype.kind not in "biuf":
        raise InputError(f"--labels '{path}': dtype {labels.dtype} is not numeric")
    if labels.ndim == 0 or len(labels) != rows:
        raise InputError(
            f"--labels '{path}': {len(labels) if labels.ndim else 0} rows for {rows} input samples"
        )
    return labels
