"""Edits for `tensorprobe.run`: what to do to a layer's output before the rest of the model
reads it (interventions). Format-neutral records only; the Keras backend applies them
(backends/keras/interventions.py). No TensorFlow is imported here.

    >>> import tensorprobe
    >>> from tensorprobe import edits
    >>> result = tensorprobe.run(model, x, edits={"block1_conv2": edits.zero(channels=[3])})
    >>> result.applied["vgg16/block1_conv2"]["calls"]
    1

Each edit takes `channels=[...]` (indexes along the last axis) and `positions=[...]` (along
the axis after the batch: a sequence's positions) to change only that part of the value; the
rest passes unchanged. An edit on a layer's path changes every call of a shared layer;
`PATH/call_K` names one call (as the dump names its datasets).
"""

import numbers
import os
from dataclasses import dataclass

from tensorprobe import errors
from tensorprobe.errors import UsageError

KINDS = ("zero", "scale", "add", "set", "mean", "patch", "function")


@dataclass(frozen=True, eq=False)
class Edit:
    """One edit: `kind` (KINDS), its `value` (the factor, the array, the dump's path, the
    function), and the part of the value it changes (None: all of it)."""

    kind: str
    value: object = None
    channels: tuple | None = None
    positions: tuple | None = None

    @property
    def reads_dump(self):
        """Whether its value comes from a dump (`mean_from`, `patch_from`)."""
        return self.kind in ("mean", "patch")

    def describe(self):
        """'zero', 'scale(0.5)', 'patch_from(clean.h5)', with the part it changes: what the
        dump's `edits` attribute and the CLI's report say."""
        if self.kind == "zero":
            text = "zero()"
        elif self.kind in ("scale", "add"):
            text = f"{self.kind}({_number_text(self.value)})"
        elif self.kind == "set":
            text = f"set(array of shape {tuple(self.value.shape)})"
        elif self.kind == "mean":
            text = f"mean_from({self.value})"
        elif self.kind == "patch":
            text = f"patch_from({self.value})"
        else:
            text = f"function({getattr(self.value, '__name__', type(self.value).__name__)})"
        for axis, indexes in (("channels", self.channels), ("positions", self.positions)):
            if indexes is not None:
                text += f" {axis}={list(indexes)}"
        return text


def _number_text(value):
    import numpy as np

    array = np.asarray(value)
    return repr(array.item()) if array.ndim == 0 else f"array of shape {array.shape}"


def zero(*, channels=None, positions=None):
    """Set the value to 0 (zero ablation)."""
    return _edit("zero", None, channels, positions)


def scale(k, *, channels=None, positions=None):
    """Multiply the value by `k` (a number, or an array broadcast to the value)."""
    return _edit("scale", _numeric(k, "scale"), channels, positions)


def add(v, *, channels=None, positions=None):
    """Add `v` (a number, or an array broadcast to the value)."""
    return _edit("add", _numeric(v, "add"), channels, positions)


def set(value, *, channels=None, positions=None):  # noqa: A001 - the issue's name: edits.set(array)
    """Replace the value by `value`, an array broadcast to it (one sample's shape, or a batch's)."""
    return _edit("set", _numeric(value, "set"), channels, positions)


def mean_from(dump, *, channels=None, positions=None):
    """Replace the value by the mean over the rows of the dump `dump` of that layer's dataset
    (mean ablation)."""
    return _edit("mean", _dump_path(dump, "mean_from"), channels, positions)


def patch_from(dump, *, channels=None, positions=None):
    """Replace the value by the same rows of that layer's dataset in the dump `dump`, written
    from another run (activation patching): row i of the inputs gets row i of the dump."""
    return _edit("patch", _dump_path(dump, "patch_from"), channels, positions)


def function(fn, *, channels=None, positions=None):
    """Replace the value by `fn(value)`, a function taking and returning a tensor of the same
    shape and dtype (a plain callable given as an edit means this)."""
    if not callable(fn):
        raise UsageError(f"edits: function({fn!r}): expected a callable", argument="edits")
    return _edit("function", fn, channels, positions)


def coerce(edit, where):
    """An Edit from what `edits={path: ...}` holds: an Edit, or a callable (`function`)."""
    if isinstance(edit, Edit):
        return edit
    if callable(edit):
        return function(edit)
    raise UsageError(f"{where}: expected an edit (tensorprobe.edits.zero(), scale(k), ...) or a callable, "
                     f"not {type(edit).__name__}", argument="edits")


def _edit(kind, value, channels, positions):
    return Edit(kind, value, _indexes(channels, "channels"), _indexes(positions, "positions"))


def _indexes(values, name):
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    found = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise UsageError(f"edits: {name}={values!r}: expected integer indexes", argument="edits")
        found.append(int(v))
    if not found:
        raise UsageError(f"edits: {name}=[]: give at least one index (None edits all of them)", argument="edits")
    return tuple(found)


def _numeric(value, name):
    import numpy as np

    array = np.asarray(value)
    if isinstance(value, bool) or array.dtype.kind not in "biuf":
        raise UsageError(f"edits: {name}({value!r}): expected a number or a numeric array", argument="edits")
    return value if array.ndim == 0 else array


def _dump_path(dump, name):
    if not isinstance(dump, (str, os.PathLike)):
        raise UsageError(f"edits: {name}({dump!r}): expected the path of a dump", argument="edits")
    return os.fspath(dump)


@dataclass
class RunResult:
    """What `tensorprobe.run` computed: `outputs` {output name: array} and `activations`
    {dataset name: array} with the edits applied; `applied` {edited path: {"calls": n,
    "max_abs_change": v}} (how many calls of the layer were edited, and the largest change the
    edit made to its value); `change` {output name: {"max_abs_change": v,
    "top_class_changed": n or None}}: how far each output moved from the unedited model's
    (None when asked not to compute it)."""

    outputs: dict
    activations: dict
    applied: dict
    change: dict | None = None

    def to_json(self):
        """`applied` and `change`, as `tensorprobe run --json` prints them."""
        return {"applied": self.applied, "change": self.change}


def edit_option_name(kind):
    """The CLI option of an edit kind: --zero, --multiply (--scale scales the inputs), --add,
    --set, --mean, --patch."""
    return {"scale": "--multiply"}.get(kind, f"--{kind}")


def edit_option(kind):
    """How messages name where an edit came from: the CLI's option, the API's `edits`."""
    return errors.words(edit_option_name(kind), "edits")
