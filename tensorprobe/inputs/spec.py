"""What each model input takes: its name, one sample's shape, its dtype and, for images, where
the channel axis is."""

from dataclasses import dataclass

from tensorprobe.errors import ModelLoadError
from tensorprobe.text import shape_text

LAYOUTS = ("channels_last", "channels_first")


@dataclass(frozen=True)
class InputSpec:
    """One model input. `shape` is one sample's shape (None where any size goes)."""

    name: str
    shape: tuple
    dtype: str
    data_format: str = "channels_last"

    @property
    def text(self):
        """Whether the input takes strings (`keras.Input(dtype="string")`, a tf.string
        placeholder): fed from text files, string arrays or lists of str."""
        return self.dtype == "string"

    def describe(self):
        """'image (None, 32, 32, 3) float32', as `tensorprobe layers` shows inputs."""
        return f"{self.name} {shape_text((None, *self.shape))} {self.dtype}"

    @property
    def image_axes(self):
        """(height axis, width axis, channel axis or None) of one sample, or None when the input
        does not take images: (H, W, C), (C, H, W) channels-first, or (H, W) for one channel."""
        if self.text:
            return None
        if len(self.shape) == 2:
            return 0, 1, None
        if len(self.shape) != 3:
            return None
        return (1, 2, 0) if self.data_format == "channels_first" else (0, 1, 2)

    @property
    def channels(self):
        """The channel count images are converted to (3 when the input leaves it open)."""
        axes = self.image_axes
        if axes is None:
            return None
        if axes[2] is None:
            return 1
        return self.shape[axes[2]] or 3

    @property
    def height_width(self):
        """(height, width); either may be None when the input takes any size."""
        h, w, _ = self.image_axes
        return self.shape[h], self.shape[w]


def describe_all(specs):
    return ", ".join(s.describe() for s in specs)


def from_tensors(tensors, names=None, data_format=None):
    """One InputSpec per model input tensor (a tf.TensorSpec, a Keras tensor), in the model's
    order, named `names` (else each tensor's own name).

    The channel axis is `data_format`, what the model's own layers say (backends: the first
    layer with a `data_format`); a model without one (a Dense net on images, a graph) is
    taken as channels-last unless its input shape only makes sense channels-first.
    """
    names = names or [None] * len(tensors)
    specs = []
    for i, (t, name) in enumerate(zip(tensors, names)):
        name = name or str(getattr(t, "name", None) or f"input_{i}").split(":")[0]
        rank = getattr(t.shape, "rank", 1)  # a graph's TensorShape; Keras 3 gives a tuple
        if rank is None:  # a TF 1 placeholder made without a shape
            raise ModelLoadError(f"input '{name}' has no known shape, not even a rank, so tensorprobe "
                                 "cannot tell its batch axis from a sample's")
        if rank == 0:  # a TF 1 `keep_prob`
            raise ModelLoadError(f"input '{name}' is a scalar (shape ()), with no batch axis to feed "
                                 "samples along")
        shape = tuple(None if d is None else int(d) for d in t.shape[1:])
        dtype = getattr(t.dtype, "name", None) or str(t.dtype)
        fmt = data_format or _guess_data_format(shape)
        specs.append(InputSpec(name, shape, dtype, fmt))
    return specs


def _guess_data_format(shape):
    if len(shape) == 3 and shape[-1] not in (1, 2, 3, 4) and shape[0] in (1, 2, 3, 4):
        return "channels_first"
    return "channels_last"


