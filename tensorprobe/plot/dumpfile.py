"""A dump, read for pictures: which dataset `--layer` names, one sample's rows, the source of a
row, and every value of a dataset streamed in blocks of bounded size (pure h5py/NumPy).
"""


import h5py
import numpy as np

from tensorprobe import errors, store
from tensorprobe.errors import InputError, UnknownLayerError
from tensorprobe.text import did_you_mean

READ_BYTES = 16 << 20  # at most this much of a dataset in memory at once when streaming it


class Dump:
    """An open, complete tensorprobe dump. Use as a context manager; a file that is not one,
    or fails to read, is a one-line error naming it."""

    def __init__(self, path):
        self.path = str(path)
        self.file = store.open_dump(self.path)  # the checks `summary` and `diff` make

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def reading(self):
        """HDF5 read errors (a truncated or damaged file) as one error naming the file."""
        return store.reading(self.path)

    def dataset_paths(self, group="activations"):
        paths = []
        if group in self.file:
            self.file[group].visititems(
                lambda name, obj: paths.append(name) if isinstance(obj, h5py.Dataset) else None
            )
        return paths

    def resolve(self, name):
        """The dataset path under /activations that --layer NAME means: the path itself
        (`vgg16/block1_conv2`, a leading `activations/` allowed), or a unique suffix of whole
        path components (`block1_conv2`)."""
        paths = self.dataset_paths()
        wanted = name.strip("/")
        wanted = wanted[len("activations/"):] if wanted.startswith("activations/") else wanted
        if wanted in paths:
            return wanted
        candidates = [p for p in paths if p.endswith("/" + wanted)]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise UnknownLayerError(f"{errors.name('layer')} '{name}' is ambiguous in '{self.path}': it names "
                                    f"{', '.join(candidates)}; give the full path", argument="layer")
        inside = [p for p in paths if p.startswith(wanted + "/") or f"/{wanted}/" in f"/{p}"]
        if inside:
            raise UnknownLayerError(f"{errors.name('layer')} '{name}' is a group in '{self.path}'; pick one of its "
                                    f"datasets: {', '.join(inside)}", argument="layer")
        raise UnknownLayerError(f"{errors.name('layer')} '{name}': '{self.path}' has no such dataset"
                                f"{_did_you_mean(wanted, paths)}", argument="layer")

    def activations(self, path):
        return store.checked(self.file["activations"][path])

    def gradients(self, path):
        """The gradient dataset beside activation `path`, or None when the dump has none."""
        group = self.file.get("gradients")
        ds = group.get(path) if group is not None else None
        return store.checked(ds) if isinstance(ds, h5py.Dataset) else None

    def source(self, row):
        """The /inputs/source string of sample `row` (the input file it came from)."""
        sources = self.file.get("inputs/source")
        if not isinstance(sources, h5py.Dataset) or sources.ndim != 1 or row >= sources.shape[0]:
            raise InputError(f"'{self.path}' records no input source for sample {row} (/inputs/source)")
        return _text(store.checked(sources)[row])

    def attr(self, name, default=None):
        return _text(self.file.attrs.get(name, default))


def stream(ds, max_bytes=None):
    """Yield a dataset's values in blocks of at most `max_bytes` (READ_BYTES by default):
    whole sample rows where they fit, parts of one sample where it is larger
    (store.element_blocks), so memory stays bounded however large one sample is."""
    max_bytes = READ_BYTES if max_bytes is None else max_bytes
    ds = store.checked(ds)
    for key, _ in store.element_blocks(ds, max_bytes // max(1, ds.dtype.itemsize)):
        yield ds[key]


def _did_you_mean(name, paths):
    close = did_you_mean(name, paths)
    if close:
        return close
    if paths and len(paths) <= 8:
        return f"; it holds {', '.join(paths)}"
    return ""


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


