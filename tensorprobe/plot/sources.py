"""The input image of a sample, read back from the source its dump recorded.

A dump stores each row's source (/inputs/source), not a copy of the input: `file.npy[i]`
(row i of an array file), `file.npy` (a file holding one sample) or an image file's path.
So the file must still exist where the dump was made from (relative paths are taken from
the current folder). Image files are shown as they are (Pillow reads them); array rows as
raw values, scaled to their own min..max for display.
"""

import re
from pathlib import Path

import numpy as np

from tensorprobe import errors
from tensorprobe.errors import InputError

_ROW = re.compile(r"^(?P<file>.+)\[(?P<row>\d+)\]$")
_ARRAY_SUFFIXES = (".npy", ".npz")


def read_image(source, sample):
    """The image of `source` (the /inputs/source string of sample number `sample`) as float
    RGB in [0, 1], shape (H, W, 3)."""
    match = _ROW.match(source)
    file, row = (match["file"], int(match["row"])) if match else (source, None)
    path = Path(file)
    if not path.is_file() and ("; " in source or "=" in source or file in ("-", "<stdin>")):
        raise InputError(f"sample {sample} came from '{source}', which cannot be read back as one "
                         "image (standard input, or a model with several inputs)")
    if not path.is_file():
        raise InputError(
            f"input '{file}' of sample {sample} does not exist (relative to the current folder); "
            f"a dump records where each input came from, not a copy, so {errors.name('heatmap')} needs the file "
            "where it was when the dump was made"
        )
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return _display(_array_row(path, row, sample), source, sample)
    return _image_file(path)


def _array_row(path, row, sample):
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if len(archive.files) != 1:
                    raise InputError(f"input '{path}' of sample {sample} holds {len(archive.files)} "
                                     f"arrays; {errors.name('heatmap')} reads back .npz files holding one")
                array = archive[archive.files[0]]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"input '{path}' of sample {sample}: not a readable array file ({e})") from e
    if row is None:
        return np.asarray(array)
    if array.ndim == 0 or row >= array.shape[0]:
        raise InputError(f"input '{path}' has no row {row} (shape {tuple(array.shape)}); "
                         "it changed since the dump was made")
    return np.asarray(array[row])


def _image_file(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"input '{path}': not a readable image ({e})") from e


def _display(array, source, sample):
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) values -> RGB in [0, 1], scaled to the
    array's own finite min..max (a flat image is black)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype.kind not in "biuf" or not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise InputError(f"input '{source}' of sample {sample} is not an image: shape "
                         f"{tuple(array.shape)} {array.dtype}, expected (H, W) or (H, W, 1|3|4) numbers")
    values = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros((*values.shape[:2], 3))
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.where(finite, scaled, 0.0)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return scaled
