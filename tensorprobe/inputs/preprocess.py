"""--scale, --offset and --preprocess: values -> what the model was trained on.

`x * scale + offset` comes first, then keras.applications' `preprocess_input` of the module
--preprocess names. The names are discovered from keras.applications itself (every module
with a `preprocess_input`, `imagenet_utils` aside), so a Keras that adds a family adds a name.
"""

import difflib
import inspect
import types

import numpy as np

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
    raise UsageError(f"--preprocess '{name}': no such keras.applications preprocessing{hint} "
                     f"(choose from {', '.join(functions)})")


class Preparation:
    """The value changes for one model input, applied to a batch (a NumPy array)."""

    def __init__(self, spec, options, function=None):
        self.spec = spec
        self.scale, self.offset = options.scale, options.offset
        self.function = function
        self.dtype = np.dtype(spec.dtype)
        self.work_dtype = np.result_type(self.dtype, np.float32) if options.prepares else self.dtype
        self.kwargs = {}
        if function is not None and "data_format" in inspect.signature(function).parameters:
            self.kwargs["data_format"] = spec.data_format

    def __call__(self, batch):
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
