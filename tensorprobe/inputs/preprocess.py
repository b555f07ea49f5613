"""--scale, --offset and --preprocess: values -> what the model was trained on.

`x * scale + offset` comes first, then keras.applications' `preprocess_input` of the module
--preprocess names. The names are discovered from keras.applications itself (every module
with a `preprocess_input`, `imagenet_utils` aside), so a Keras that adds a family adds a name.
"""

import difflib
import inspect
import types

import numpy as np

from tensorprobe import errors
from tensorprobe.errors import UsageError

_NOT_A_FAMILY = {"imagenet_utils"}


def preprocessors():
    """{name: preprocess_input} for every keras.applications family."""
    import keras

    found = {}
    for name, module in vars(keras.applications).items():
        function = getattr(module, "preprocess_input", None)
        if isinstance(module, types.ModuleType) and callable(function) and name not in _NOT_A_FAMILY:
            found[name] = function
    return dict(sorted(found.items()))


def lookup(name):
    """The preprocess_input function --preprocess NAME means; a usage error listing the
    valid names otherwise."""
    functions = preprocessors()
    if name in functions:
        return functions[name]
    close = difflib.get_close_matches(name, functions, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"{errors.name('preprocess')} '{name}': no such keras.applications preprocessing{hint} "
                     f"(choose from {', '.join(functions)})", argument="preprocess")


class Preparation:
    """The value changes for one model input, applied to a batch (a NumPy array). An input
    the options do not apply to (`active` false) only gets its dtype."""

    def __init__(self, spec, options, function=None, active=True):
        self.spec = spec
        active = active and not spec.text  # check() refuses options that would change text
        self.scale, self.offset = (options.scale, options.offset) if active else (1.0, 0.0)
        self.function = function if active else None
        self.dtype = np.dtype(object if spec.text else spec.dtype)
        changes = self.function is not None or self.scale != 1.0 or self.offset != 0.0
        self.work_dtype = np.result_type(self.dtype, np.float32) if changes else self.dtype
        self.kwargs = {}
        if self.function is not None and "data_format" in inspect.signature(self.function).parameters:
            self.kwargs["data_format"] = spec.data_format

    def __call__(self, batch):
        if self.spec.text:
            return batch  # str, bytes or objects that are all one of those: TensorFlow takes each
        x = batch.astype(self.work_dtype, copy=False)
        if self.scale != 1.0:
            x = x * self.work_dtype.type(self.scale)
        if self.offset != 0.0:
            x = x + self.work_dtype.type(self.offset)
        if self.function is not None:
            if not x.flags.writeable:  # rows read straight from a file's bytes
                x = x.copy()
            x = np.asarray(self.function(x, **self.kwargs))
        return x.astype(self.dtype, copy=False)


def applies_to(specs):
    """The inputs --scale, --offset and --preprocess change: the only input of a single-input
    model; the image inputs (one sample of rank 3: height, width, channels in either order)
    of a model with several inputs, whose other inputs (vectors, sequences) pass unchanged."""
    if len(specs) == 1:
        return [True]
    return [len(spec.shape) == 3 for spec in specs]


def _options():
    return f"{errors.name('scale')}, {errors.name('offset')} and {errors.name('preprocess')}"


def check(specs, options):
    """Usage errors for preprocessing options that cannot apply to this model's inputs."""
    if not options.prepares:
        return
    active = applies_to(specs)
    if not any(active):
        raise UsageError(f"{_options()} apply to image inputs (height, width, channels), and this model has "
                         "none: " + ", ".join(spec.describe() for spec in specs))
    for spec, on in zip(specs, active):
        if not on:
            continue
        if spec.text or np.dtype(spec.dtype).kind != "f":
            raise UsageError(f"{_options()} need floating-point inputs; input {spec.describe()} is not")
        if options.preprocess is not None and (len(spec.shape) != 3 or spec.channels != 3):
            raise UsageError(f"{errors.name('preprocess')} {options.preprocess}: keras.applications' preprocessing "
                             f"takes RGB images, and input {spec.describe()} does not", argument="preprocess")
