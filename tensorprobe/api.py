"""The Python API: load a model, compute activations into memory, dump them to HDF5, read and
compare dumps. The CLI is a thin face over these functions.

No function here exits the process, prints to stdout, or touches signal handlers or the
allocator (those stay in `tensorprobe.cli`). Errors are `tensorprobe.errors.TensorprobeError`s
whose messages name this API's arguments (`layers`, `output`) rather than the CLI's flags: the
core writes them with `errors.name`, and sets `argument` to the argument at fault where there
is one.

    >>> import tensorprobe
    >>> model = tensorprobe.load("sample_models/transfer.keras")
    >>> acts = tensorprobe.activations(model, x, layers=["block1_conv2"])
    >>> acts["vgg16/block1_conv2"].shape
    (4, 32, 32, 8)
"""

import dataclasses
import os
from collections.abc import Mapping

from tensorprobe import errors
from tensorprobe.text import parse_size

# ---- models ---------------------------------------------------------------------------------

class Model:
    """A loaded model of any format tensorprobe reads. `layers()` and `tensors()` return what
    `tensorprobe layers --json` and `tensors --json` print; `inputs` the model's inputs.
    `backend` is the format's backends.base.Backend."""

    def __init__(self, backend):
        self.backend = backend

    def __repr__(self):
        return f"<tensorprobe.Model {self.path} ({self.loader})>"

    @property
    def path(self):
        return self.backend.path

    @property
    def loader(self):
        """What read it: 'keras 3.x.y', 'tf_keras 2.x.y', 'tensorflow 2.x.y', 'tf.lite 2.x.y'."""
        return self.backend.loader

    @property
    def format(self):
        return self.backend.format

    def describe(self):
        """The model's ModelInfo: its layers, inputs, outputs and parameter counts."""
        return self.backend.describe()

    @property
    def inputs(self):
        """[{"name", "shape", "dtype"}] per model input, shapes with None for the batch."""
        return [{"name": s.name, "shape": [None, *s.shape], "dtype": s.dtype} for s in self.backend.input_specs()]

    def layers(self):
        """[{"index", "path", "name", "class", ...}]: `tensorprobe layers --json`."""
        return [layer.to_json() for layer in self.describe().layers]

    def tensors(self):
        """[{"name", "op", "dtype", "shape", ...}]: `tensorprobe tensors --json`."""
        return [t.to_json() for t in self.backend.tensor_graph.tensors]


def load(model, *, custom_objects=(), unsafe=False, signature=None, raw_quantized=False):
    """A Model from a path (`.keras`, `.h5`, a SavedModel folder, a frozen graph, a `.tflite`
    file) or an in-memory `keras.Model` (Keras 3 or tf_keras). `custom_objects`: paths of
    Python files defining the custom classes the file needs; `unsafe`: allow Lambda layers
    holding code; `raw_quantized`: a TFLite file's quantized tensors as their integers, not
    dequantized.

        >>> model = tensorprobe.load("sample_models/transfer.keras")
        >>> [layer["path"] for layer in model.layers()][:3]
        ['image', 'vgg16', 'vgg16/input_layer']
    """
    return open_model(model, custom_objects, unsafe, signature, raw_quantized=raw_quantized)


def open_model(model, custom_objects=(), unsafe=False, signature=None, layers=True, raw_quantized=False):
    """`load`, for the CLI too. Without `layers` only the graph of tensors is wanted: a Keras 2
    SavedModel is not rebuilt with tf_keras."""
    from tensorprobe import pipeline

    if isinstance(model, Model):
        return model
    options = None
    if isinstance(model, (str, os.PathLike)):
        from tensorprobe.backends.detect import OpenOptions
        from tensorprobe.backends.keras.custom import load_custom_objects

        options = OpenOptions(signature, layers, raw_quantized, unsafe, load_custom_objects(custom_objects))
    return Model(pipeline.open_backend(model, options))


def _backend(model):
    """The Backend of a Model, a path or an in-memory model, for the pipeline."""
    return open_model(model).backend


def _selection(layers, match, all_layers, tensors, tensor_match, gradients, target_output, labels, training,
               jit=False):
    from tensorprobe.pipeline import Selection

    return Selection(_names(layers, "layers"), match, all_layers, _names(tensors, "tensors"), tensor_match,
                     gradients, target_output, labels, training, jit)


def _job(batch_size, progress=None):
    from tensorprobe.pipeline import Job

    bar = progress_bar() if progress is True else progress or None
    job = Job(batch_size, bar)
    job.check()
    return job


# ---- inputs ----------------------------------------------------------------------------------

def preparation(resize="stretch", interpolation="bilinear", size=None, preprocess=None, scale=None,
                offset=None, skip_bad=False):
    """How inputs are prepared (dump's input options; `resize="none"` refuses other sizes). The
    CLI's click options check what this checks itself."""
    from numbers import Real

    from tensorprobe.inputs.options import INTERPOLATIONS, RESIZE_MODES, Options

    for value, choices, argument in ((resize, (*RESIZE_MODES, "none"), "resize"),
                                     (interpolation, INTERPOLATIONS, "interpolation")):
        if value not in choices:
            raise errors.UsageError(f"{errors.name(argument)} {value!r}: choose from {', '.join(choices)}",
                                    argument=argument)
    for value, argument in ((scale, "scale"), (offset, "offset")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            raise errors.UsageError(f"{errors.name(argument)} {value!r}: expected a number", argument=argument)
    return Options(resize=resize, interpolation=interpolation, size=size, preprocess=preprocess,
                   scale=1.0 if scale is None else scale, offset=0.0 if offset is None else offset,
                   skip_bad=skip_bad)


def _api_x(x):
    """The API's `x`: a list of str is text for a model whose one input takes strings."""
    from tensorprobe.inputs import lines

    return lines.from_api(x)


# ---- running ---------------------------------------------------------------------------------

def activations(model, x, *, layers=(), match=None, all_layers=False, tensors=(), tensor_match=None,
                gradients=None, target_output=None, labels=None, training=False, batch_size=32,
                **prepare):
    """{dataset name: array} for the inputs `x`, computed in batches of `batch_size`.

    `model`: a Model, a path or a keras.Model. `x`: a NumPy array (one sample of the input's
    shape, or a batch), a dict of arrays for a model with several inputs, a list of str (or a
    str array) for a model whose one input takes strings, or what `dump` takes as INPUTS
    (paths of .npy/.npz/.txt/image files, folders, globs; one str, or pathlib.Path items, where
    a list of str would be text). Keys are the names
    `summary --json` prints: `vgg16/block1_conv2`, `gradients/vgg16/block1_conv2`,
    `tensors/<tensor name>`. `gradients` is a target as the CLI's --target takes it ("top",
    "class:2", "sum", "loss:NAME" with `labels`). Preparation options as `dump`'s: resize,
    interpolation, size, preprocess, scale, offset, skip_bad.

        >>> acts = tensorprobe.activations("sample_models/transfer.keras", x, layers=["fc1"],
        ...                                gradients="top")
        >>> sorted(acts)
        ['fc1', 'gradients/fc1']
    """
    from tensorprobe import pipeline

    prep = preparation(**prepare)
    job = _job(batch_size)
    selection = _selection(layers, match, all_layers, tensors, tensor_match, gradients, target_output, labels,
                           training)
    selection.check(prep.skip_bad)
    return pipeline.run_activations(_backend(model), _api_x(x), selection, prep, job)


def dump(model, x, output, *, layers=(), match=None, all_layers=False, tensors=(), tensor_match=None,
         gradients=None, target_output=None, labels=None, training=False, batch_size=32,
         overwrite=False, dtype=None, compression=None, reduce=None, shard=None, resume=False,
         max_bytes=None, jit=False, max_live_bytes=None, progress=None, **prepare):
    """Write the activations of `x` to the HDF5 file `output`, exactly as `tensorprobe dump`
    does (streamed a batch at a time, written atomically, every row checked), and return the
    summary `tensorprobe summary --json` prints. Arguments as `activations`'s, and:
    `dtype` ("float16", ...), `compression` ("gzip:4", "lzf"), `reduce` ("mean", "max"),
    `shard` ("K/N"), `resume`, `max_bytes`, `progress=True` for a progress bar (works in
    Jupyter); `max_live_bytes` (bytes or "64M"): an ONNX model's tensors come back in chunks
    whose values for one batch take at most this, one onnxruntime session each (default 1G;
    other formats refuse it).

        >>> summary = tensorprobe.dump("sample_models/transfer.keras", x, "acts.h5",
        ...                            layers=["block1_conv2"])
        >>> summary["samples"]
        4
    """
    from tensorprobe import pipeline, store
    from tensorprobe.probe import Storage, parse_compression
    from tensorprobe.report import summary_record

    prep = preparation(**prepare)
    job = _job(batch_size, progress)
    selection = _selection(layers, match, all_layers, tensors, tensor_match, gradients, target_output, labels,
                           training, jit)
    if max_live_bytes is not None:
        size = parse_size(max_live_bytes, "max_live_bytes") if isinstance(max_live_bytes, str) else max_live_bytes
        selection = dataclasses.replace(selection, max_live_bytes=size)
    store.check_hdf5_name(output, "output")  # as the CLI's --output is checked
    storage = Storage(dtype, reduce, parse_compression(compression) if compression else (None, None))
    if isinstance(max_bytes, str):
        parse_size(max_bytes)
    selection.check(prep.skip_bad)
    result = pipeline.run_dump(_backend(model), _api_x(x), (), output, selection, prep, storage, job,
                               overwrite=overwrite, shard=shard, resume=resume, max_bytes=max_bytes)
    return summary_record(result.summary, output)


def run(model, x, *, edits, layers=(), match=None, all_layers=False, training=False, batch_size=32, output=None,
        overwrite=False, baseline=True, progress=None, **prepare):
    """Run the model on `x` with `edits` applied to layers' outputs before the rest of the
    model reads them (interventions): a tensorprobe.edits.RunResult with `.outputs` {output
    name: array}, `.activations` (the `layers`/`match` chosen, as edited), `.applied` {path:
    {"calls", "max_abs_change"}} and `.change` (how far each output moved from the unedited
    model's; `baseline=False` skips computing it). `edits`: {layer path: edit}, an edit from
    tensorprobe.edits (zero(), scale(k), add(v), set(array), mean_from(dump),
    patch_from(dump), each with channels=/positions=) or a callable; `PATH/call_K` edits one
    call of a shared layer. `output`: write a dump there instead (/outputs/<name>, the
    layers under /activations). Inputs and preparation as `activations` takes them. Keras
    models only.

        >>> from tensorprobe import edits
        >>> result = tensorprobe.run(model, x, edits={"fc1": edits.zero(channels=[0, 1])})
        >>> result.change["predictions"]["top_class_changed"]
        1
    """
    from tensorprobe import interventions

    prep = preparation(**prepare)
    job = _job(batch_size, progress)
    found = interventions.edit_list(edits)
    selection = _selection(layers, match, all_layers, (), None, None, None, None, training)
    return interventions.run_edits(_backend(model), _api_x(x), (), found, selection, prep, job, output=output,
                                   overwrite=overwrite, attrs={"command": ["python", "tensorprobe.run"]},
                                   baseline=baseline)


def patch(model, clean, corrupt, *, metric, layers=(), match=None, positions=False, target_output=None,
          batch_size=32, progress=None, **prepare):
    """Activation patching, swept: for each layer `layers`/`match` choose (with `positions`,
    each position of its sequence axis), run the `corrupt` inputs with that value replaced by
    the `clean` inputs' (row i by row i) and measure `metric` on the model output
    (`target_output` where it has several): "logit_diff:I,J" (output I minus J), "prob:K"
    (the softmax of the output, at K) or "l2" (the distance from the clean output). A dict:
    `layers`, `mean` (layers, positions) averaged over the inputs, `per_input` (layers,
    positions, inputs), `recovered` ((mean - corrupt) / (clean - corrupt), from the means),
    `clean` and `corrupt` (per input). Keras models only.

        >>> sweep = tensorprobe.patch("model.keras", clean, corrupt, metric="logit_diff:0,1",
        ...                           match="block_\\d+$", positions=True)
        >>> sweep["recovered"].shape      # (layers, positions)
    """
    from tensorprobe import interventions

    prep = preparation(**prepare)
    job = _job(batch_size, progress)
    selection = _selection(layers, match, False, (), None, None, None, None, False)
    return interventions.run_patch(_backend(model), _api_x(clean), _api_x(corrupt), selection, metric, prep, job,
                                   positions=positions, target_output=target_output)


def nanhunt(model, x, *, backward=False, labels=None, loss=None, target=None, target_output=None,
            training=False, jit=False, batch_size=32, progress=None, **prepare):
    """Where the values of `x` stop being finite: what `tensorprobe nanhunt --json` prints
    (its `finite` is True when every input, layer and gradient is). The first layer, in
    compute order, that makes a NaN or Inf from finite inputs is `report["forward"]["culprit"]`.
    With `backward`, also the gradients of `target` (as `dump --target` takes it; `loss` NAME
    with `labels` is `loss:NAME`) w.r.t. each layer's output, in backward order; Keras models
    only. Arguments otherwise as `activations`'s.

        >>> report = tensorprobe.nanhunt("models/logs.keras", "models/batch.npy")  # docs/numerics.md
        >>> report["forward"]["culprit"], report["forward"]["layers"][1]["nonfinite_samples"]
        ('log', 8)
    """
    from tensorprobe import numerics

    prep = preparation(**prepare)
    job = _job(batch_size, progress)
    if not backward and (labels is not None or loss is not None or target is not None or target_output is not None):
        given = next(n for n, v in (("labels", labels), ("loss", loss), ("target", target),
                                    ("target_output", target_output)) if v is not None)
        raise errors.UsageError(f"{errors.name(given)} goes with {errors.name('backward')}", argument=given)
    how = None
    if backward:
        how = numerics.Backward(numerics.backward_target(target, loss, labels), labels, target_output)
    return numerics.run_nanhunt(_backend(model), _api_x(x), (), prep, job, how, training, jit)


def validate(dump, model=None, *, rtol=1e-5, atol=1e-8, batch_size=32, custom_objects=(), unsafe=False):
    """Check the dump at `dump` against the model that made it (`model`, default the one it
    records): what `tensorprobe validate --json` prints (its `valid` is True when no stored
    layer output disagrees with its recomputation). Keras models only replay layers alone;
    other formats are checked end to end where the dump's inputs are still readable.

        >>> tensorprobe.validate("acts.h5")["first_mismatch"]  # one row changed (docs/numerics.md)
        'vgg16/block2_conv2'
    """
    from tensorprobe import numerics

    dump = os.fspath(dump)
    backend = open_model(model if model is not None else numerics.recorded_model(dump), custom_objects,
                         unsafe).backend
    return numerics.run_validate(dump, backend, numerics.Tolerance(rtol, atol), _job(batch_size))


def progress_bar(console=None):
    """A `progress` for dump/compare: a rich bar on `console` (None: stderr, which Jupyter
    renders in the notebook)."""
    from tensorprobe.progress import bar

    return lambda total: bar(total, console)


# ---- comparing two models --------------------------------------------------------------------

def compare(model_a, model_b, x, *, layers=(), match=None, pairs=None, rtol=None, atol=None, metric=None,
            error_stat=None, batch_size=32, save_a=None, save_b=None, overwrite=False, progress=None, **prepare):
    """Run two models on the same inputs and compare the layers both have, paired by path:
    what `tensorprobe compare --json` prints (`pairs` in model A's order, each with `status`
    "ok" or "differ"; `first_divergence`, the first pair out of tolerance, or None;
    `criterion`, the rule used and why; `skipped`, the inputs passed over with `skip_bad`).
    `layers`: a name or a list of names in A; `pairs`:
    {path in A: path in B} (or [(A, B)]) where names differ. The criterion: `metric`
    "scaled:X", "snr:DB", "cosine:X" or "allclose" (numpy's rule with `rtol`/`atol`, which
    `rtol`/`atol` alone mean too); None: the default for the two models' precisions (scaled:1e-4
    for float32 against float32, snr:20 where either is quantized or half precision).
    `rtol`/`atol`: a number, or per-pair rules: "GLOB=VALUE" strings (fnmatch on the pair's
    path, the first match wins; a plain number is the default) or a {glob: value} dict ("" the
    default); `error_stat` "elemwise", "max", "mean", "median" or "quantile:Q": what the
    tolerances apply to (Polygraphy's rule: the statistic of |a - b| <= atol or that of
    |a - b| / |b| <= rtol; see dumpdiff.py). Both mean "allclose".
    `x`: as `activations` takes it; model B's inputs are fed by name (by position when the
    two models name them differently). `save_a`/`save_b`: also write each model's outputs
    to a dump.

        >>> report = tensorprobe.compare("model.keras", "model_export/", x)
        >>> report["first_divergence"]    # None: every pair within tolerance
    """
    from tensorprobe import modelcompare, pipeline, store, text

    prep = preparation(**prepare)
    job = _job(batch_size, progress)
    criterion = modelcompare.parse_metric(metric, rtol, atol, error_stat=error_stat)  # before any model is loaded
    text.regex(match, "match")
    for path, argument in ((save_a, "save_a"), (save_b, "save_b")):
        if path is not None:
            store.check_hdf5_name(path, argument)
    return pipeline.run_compare(_backend(model_a), _backend(model_b), _api_x(x), (), prep, job,
                                layers=_names(layers, "layers"), match=match, pairs=_pairs(pairs),
                                criterion=criterion, save_a=save_a, save_b=save_b, overwrite=overwrite)


def _names(value, argument):
    """A name or a sequence of names -> a tuple of names: a string is one name (`layers="fc1"`),
    never its characters."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    try:
        names = tuple(value)
    except TypeError:
        raise errors.UsageError(f"{errors.name(argument)}: expected a name or a list of names, not "
                                f"{type(value).__name__}", argument=argument) from None
    for name in names:
        if not isinstance(name, str):
            raise errors.UsageError(f"{errors.name(argument)}: expected names (strings), got {name!r}",
                                    argument=argument)
    return names


def _pairs(pairs):
    """`pairs` as {A path: B path}, [(A path, B path)], one (A, B) pair or "A=B" strings ->
    ((A path, B path), ...)."""
    if pairs is None:
        return ()
    if isinstance(pairs, dict):
        items = list(pairs.items())
    elif isinstance(pairs, str):
        items = [pairs]
    elif (isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) and "=" not in p for p in pairs)):
        items = [pairs]  # one pair: ("dense", "dense_renamed")
    else:
        try:
            items = list(pairs)
        except TypeError:
            items = [pairs]
    result = []
    for item in items:
        if isinstance(item, str) and "=" in item:
            item = tuple(item.split("=", 1))
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(p, str) and p for p in item)):
            raise errors.UsageError(f"pairs: expected {{A path: B path}} or [(A path, B path)], got {item!r}",
                                    argument="pairs")
        result.append(tuple(item))
    return tuple(result)


def submodel(model, layers=(), match=None):
    """A keras.Model that takes the model's inputs and returns a dict {name: tensor} of the
    chosen layers' outputs (names as `dump` gives its datasets: nested models' layers, inline
    operations, custom layers' sub-layers, attention scores) and the model's own outputs under
    their output names. It calls the model's own layers, so it shares their weights (its
    `trainable_variables` are the model's: training through it trains the model) and a
    GradientTape gives true gradients; callable eagerly and inside tf.function. Call it as
    `sub(x, training=False, watch=None)`; `watch=tape.watch` watches each returned value as
    it is computed. `model`: a path or an in-memory keras.Model (Keras 3 or tf_keras).

        >>> sub = tensorprobe.submodel("sample_models/transfer.keras", layers=["block1_conv2"])
        >>> sorted(sub(x))
        ['predictions', 'vgg16/block1_conv2']
    """
    return _backend(model).submodel(_names(layers, "layers"), match)


# ---- reading and comparing dumps -----------------------------------------------------------

class DumpFile(Mapping):
    """A dump opened for reading, and a read-only mapping {dataset name: h5py dataset}:
    `file[name]` (read lazily, `[:]` or slices), `name in file`, `list(file)` and `keys()`
    (its dataset names, in model order), `len(file)`, `items()`; `attrs` (the root
    attributes), `names` (the same list as `list(file)`), `summary()`. Use it as a context
    manager, or call close(). A training file (ProbeCallback's, attrs["kind"] == "training")
    names its datasets by their HDF5 paths: `steps`, `stats/fc1/mean`, `histograms/fc1/counts`,
    `activations/fc1`; its first len(file["steps"]) rows are the steps recorded.

        >>> with tensorprobe.open_dump("acts.h5") as dump:
        ...     first = dump["vgg16/block1_conv2"][0]
        ...     "fc1" in dump, len(dump)
        (True, 3)
    """

    def __init__(self, path, allow_incomplete=False):
        from tensorprobe import store

        self.path = os.fspath(path)
        self.allow_incomplete = allow_incomplete
        self._names = None
        self._file = store.open_dump(self.path, allow_incomplete)
        self.attrs = {k: _plain(v) for k, v in self._file.attrs.items()}

    @property
    def names(self):
        if self._names is None:
            self._names = [d["name"] for d in self.summary()["datasets"]]
        return list(self._names)

    def _key(self, name):
        """The HDF5 path of the dataset `name` (`fc1`, `gradients/fc1`, `tensors/...`), or None."""
        if not isinstance(name, str):
            return None
        if self.attrs.get("kind") == "training":  # ProbeCallback's file: names are HDF5 paths
            return name if name in self.names else None
        group, path = ("activations", name)
        for prefix in ("gradients/", "tensors/"):
            if name.startswith(prefix):
                group, path = prefix[:-1], name[len(prefix):]
        full = f"{group}/{path}"
        return full if full in self._file and name in self.names else None

    def __getitem__(self, name):
        full = self._key(name)
        if full is None:
            raise KeyError(f"{name!r}: no such dataset in {self.path}; it holds {', '.join(self.names)}")
        from tensorprobe import store

        return store.checked(self._file[full])  # a damaged chunk reads as a DumpReadError naming it

    def __contains__(self, name):
        return self._key(name) is not None

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def __repr__(self):
        return f"<tensorprobe.DumpFile {self.path} ({len(self)} datasets)>"

    def summary(self):
        """What `tensorprobe summary --json` prints."""
        from tensorprobe import store

        from tensorprobe.report import summary_record

        return summary_record(store.read_summary(self.path, self.allow_incomplete), self.path)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(value):
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_dump(path, allow_incomplete=False):
    """A DumpFile for the dump at `path` (refused if incomplete unless `allow_incomplete`)."""
    return DumpFile(path, allow_incomplete)


def diff(a, b, *, rtol=1e-5, atol=1e-8, only=None, allow_incomplete=False, error_stat=None):
    """Compare two dumps dataset by dataset: what `tensorprobe diff --json` prints (its
    `match` is True when every dataset matches). `rtol`/`atol` and `error_stat` as `compare`
    takes them, the globs matched on the dataset's path."""
    from tensorprobe import dumpdiff

    return dumpdiff.diff_dumps(os.fspath(a), os.fspath(b), rtol, atol, only, allow_incomplete, error_stat)
