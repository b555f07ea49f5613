"""The dump's input options as plain values. Parsing only: no NumPy, no TensorFlow, so that
The CLI can import this module for its option definitions without slowing `--help`."""

import re
from dataclasses import dataclass

RESIZE_MODES = ("stretch", "crop", "pad")
# Every method tf.image.resize takes (tf.image.ResizeMethod's values); a test checks the list
# against TensorFlow's, so a TensorFlow upgrade that adds one fails loudly.
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")


@dataclass(frozen=True)
class Options:
    """How inputs become model inputs.

    resize: "stretch", "crop", "pad", or "none" (--no-resize: a size mismatch is an error)
    size: (height, width) for images fed to a model input that takes any size, or None
    preprocess: a keras.applications module name (vgg16, resnet50, ...) or None
    scale, offset: applied first, as x * scale + offset (1 and 0 change nothing)
    skip_bad: pass over images that cannot be decoded instead of stopping
    """

    resize: str = "stretch"
    interpolation: str = "bilinear"
    size: tuple | None = None
    preprocess: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    skip_bad: bool = False

    def __post_init__(self):
        if self.size is not None:  # images are resized to it: a bound like an image's own size
            from tensorprobe import errors
            from tensorprobe.limits import IMAGE_PIXELS

            height, width = self.size
            IMAGE_PIXELS.check(height * width, f"{errors.name('size')} {height}x{width}: {height * width:,} pixels",
                               error=errors.UsageError)

    @property
    def prepares(self):
        """Whether values change on the way in (besides resizing and channel conversion)."""
        return self.preprocess is not None or self.scale != 1.0 or self.offset != 0.0

    def attrs(self):
        """The root attributes of a dump that say how its inputs were prepared."""
        return {
            "preprocess": self.preprocess or "none",
            "scale": float(self.scale),
            "offset": float(self.offset),
            "resize": self.resize,
            "interpolation": self.interpolation,
        }


def parse_number(text):
    """A float from '0.5', '-1', '1e-3' or a fraction '1/255'. ValueError otherwise."""
    text = text.strip()
    if "/" in text:
        numerator, _, denominator = text.partition("/")
        value = float(numerator) / _nonzero(float(denominator))
    else:
        value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _nonzero(value):
    if value == 0:
        raise ValueError("division by zero")
    return value


def parse_size(text):
    """(height, width) from 'HxW' or one number for a square. ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise ValueError("expected HEIGHTxWIDTH, e.g. 224x224")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise ValueError("height and width must be at least 1")
    return height, width


def parse_named(text):
    """(name, path) from 'NAME=PATH'. ValueError otherwise."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise ValueError("expected NAME=PATH, e.g. image=photos/")
    return name.strip(), path
