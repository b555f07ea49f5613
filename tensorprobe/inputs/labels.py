"""--labels: the label rows a loss target compares the model's output with."""

import numpy as np

from tensorprobe import errors, limits
from tensorprobe.errors import InputError


def open_labels(path, rows):
    """The --labels array (memory-mapped, pickles refused): one row per input sample. A
    regular file only: a FIFO would block the map."""
    given = f"{errors.name('labels')} '{path}'"
    limits.open_regular(path, given).close()
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{given}: not a readable .npy file ({e})", argument="labels") from e
    if labels.dtype.kind not in "biuf":
        raise InputError(f"{given}: dtype {labels.dtype} is not numeric", argument="labels")
    if labels.ndim == 0 or len(labels) != rows:
        raise InputError(f"{given}: {len(labels) if labels.ndim else 0} rows for {rows} input samples",
                         argument="labels")
    return labels
