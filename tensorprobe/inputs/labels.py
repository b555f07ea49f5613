"""--labels: the label rows a loss target compares the model's output with."""

import numpy as np

from tensorprobe.errors import InputError
from tensorprobe import limits


def open_labels(path, rows):
    """The --labels array (memory-mapped, pickles refused): one row per input sample. A
    regular file only: a FIFO would block the map."""
    limits.open_regular(path, f"--labels '{path}'").close()
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
