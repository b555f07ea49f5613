"""The Python API: load a model, compute activations into memory, dump them to HDF5, read and
compare dumps. The CLI is a thin face over these functions.

No function here exits the process, prints to stdout, or touches signal handlers or the
allocator (those stay in `tensorprobe.cli`). Errors are `tensorprobe.errors.TensorprobeError`s
whose messages name this API's arguments (`layers`, `output`) rather than the CLI's flags.

    >>> import tensorprobe
    >>> model = tensorprobe.load("sample_models/transfer.keras")
    >>> acts = tensorprobe.activations(model, x, layers=["block1_conv2"])
    >>> acts["vgg16/block1_conv2"].shape
    (4, 32, 32, 8)
"""

import contextlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from tensorprobe import errors
from tensorprobe.text import parse_size

# The CLI's option names -> this API's argument names, for the messages of errors raised by
# the shared core (written with the CLI's names).
_ARGUMENTS = {
    "--layer": "layers", "--match": "match", "--all": "all_layers", "--tensor-match": "tensor_match",
    "--tensor": "tensors", "--output": "output", "--overwrite": "overwrite",
    "--gradients": "gradients", "--target-output": "target_output", "--target": "gradients",
    "--labels": "labels", "--input": "x", "--shard": "shard", "--resume": "resume",
    "--skip-bad": "skip_bad", "--size": "size", "--preprocess": "preprocess",
    "--max-bytes": "max_bytes", "--signature": "signature", "--custom-objects": "custom_objects",
    "--unsafe": "unsafe", "--batch-size": "batch_size", "--compression": "compression",
    "--dtype": "dtype", "--reduce": "reduce", "--allow-incomplete": "allow_incomplete",
    "--raw-quantized": "raw_quantized", "--save-a": "save_a", "--save-b": "save_b", "--pair": "pairs",
    "--metric": "metric", "--rtol": "rtol", "--atol": "atol", "--resize": "resize", "--no-resize": "resize='none'",
    "--interpolation": "interpolation", "--scale": "scale", "--offset": "offset", "--training": "training",
    "--jit": "jit", "--only": "only", "--model": "model",
}
_FLAG = re.compile("|".join(sorted((re.escape(k) + r"\b" for k in _ARGUMENTS), key=len, reverse=True)))
# The CLI's syntax in the shared core's messages -> this API's, before the flags are renamed.
_PHRASES = [
    (re.compile(r"give INPUT\.\.\. or --input NAME=PATH"), "give x"),
    (re.compile(r", or --input NAME=PATH for each input"),
     ", a list of arrays in the model's input order, or a dict {input name: array or path}"),
    (re.compile(r"--input NAME=PATH"), "a dict x={input name: array or path}"),
    (re.compile(r"--input '([^'=]*)=\.\.\.'"), r"x['\1']"),
    (re.compile(r"--input ([^\s':]+) '"), r"x['\1'] '"),
    (re.compile(r"--pair A_PATH=B_PATH"), "pairs={A path: B path}"),
]


def _in_api_words(message):
    for pattern, replacement in _PHRASES:
        message = pattern.sub(replacement, message)
    return _FLAG.sub(lambda m: _ARGUMENTS[m.group(0).rstrip()], message)


@contextlib.contextmanager
def _api_names():
    """Errors raised inside name this API's arguments instead of the CLI's flags."""
    try:
        yield
    except errors.TensorprobeError as e:
        e.args = (_in_api_words(str(e)),)
        raise


# ---- models ---------------------------------------------------------------------------------

class Model:
    """A loaded model of any format tensorprobe reads. `layers()` and `tensors()` return what
    `tensorprobe layers --json` and `tensors --json` print; `inputs` the model's inputs."""

    def __init__(self, loaded):
        self.loaded = loaded
        self._graph = None
        self._tensor_graph = None

    def __repr__(self):
        return f"<tensorprobe.Model {self.loaded.path} ({self.loaded.loader})>"

    @property
    def path(self):
        return self.loaded.path

    @property
    def graph(self):
        """The graph of layers: the Keras walk, or the name scopes of a graph-only model."""
        if self._graph is None:
            if self.loaded.model is None:
                from tensorprobe.backends.tfgraph import scopes

                self._graph = scopes.scope_graph(self.tensor_graph, scopes.naming(self.loaded))
            else:
                from tensorprobe.backends.keras.graph import unroll

                self._graph = unroll(self.loaded.model, self.loaded.keras)
        return self._graph

    @property
    def tensor_graph(self):
        """The frozen graph of tensors (a SavedModel signature, or the traced forward pass)."""
        if self._tensor_graph is None:
            from tensorprobe.backends.tfgraph.tensors import tensor_graph

            self._tensor_graph = tensor_graph(self.loaded)
        return self._tensor_graph

    def describe(self):
        """The model's ModelInfo: its layers, inputs, outputs and parameter counts."""
        from tensorprobe.backends.tfgraph import scopes
        from tensorprobe.layers import describe

        if isinstance(self.graph, scopes.ScopeGraph):
            return scopes.describe(self.graph)
        return describe(self.loaded, self.graph)

    @property
    def inputs(self):
        """[{"name", "shape", "dtype"}] per model input, shapes with None for the batch."""
        from tensorprobe.inputs.spec import from_graph

        graph = self.graph if self.loaded.model is not None else self.tensor_graph
        return [{"name": s.name, "shape": [None, *s.shape], "dtype": s.dtype} for s in from_graph(graph)]

    def layers(self):
        """[{"index", "path", "name", "class", ...}]: `tensorprobe layers --json`."""
        return [layer.to_json() for layer in self.describe().layers]

    def tensors(self):
        """[{"name", "op", "dtype", "shape", ...}]: `tensorprobe tensors --json`."""
        return [t.to_json() for t in self.tensor_graph.tensors]


def load(model, *, custom_objects=(), unsafe=False, signature=None, raw_quantized=False):
    """A Model from a path (`.keras`, `.h5`, a SavedModel folder) or an in-memory
    `keras.Model` (Keras 3 or tf_keras). `custom_objects`: paths of Python files defining the
    custom classes the file needs; `unsafe`: allow Lambda layers holding code;
    `raw_quantized`: a TFLite file's quantized tensors as their integers, not dequantized.

        >>> model = tensorprobe.load("sample_models/transfer.keras")
        >>> [layer["path"] for layer in model.layers()][:3]
        ['image', 'vgg16', 'vgg16/input_layer']
    """
    with _api_names():
        return open_model(model, custom_objects, unsafe, signature, raw_quantized=raw_quantized)


def open_model(model, custom_objects=(), unsafe=False, signature=None, layers=True, raw_quantized=False):
    """`load` with the errors in the CLI's words (its flags), for the CLI. Without `layers`
    only the graph of tensors is wanted: a Keras 2 SavedModel is not rebuilt with tf_keras."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        from tensorprobe.models import load_model
        from tensorprobe.models.custom import load_custom_objects

        path = os.fspath(model)
        if not os.path.exists(path):
            raise errors.UsageError(f"model '{path}': no such file or folder")
        objects = load_custom_objects(custom_objects)
        return Model(load_model(path, signature=signature, keras_model=layers, unsafe=unsafe,
                                custom_objects=objects, raw_quantized=raw_quantized))
    loaded = _in_memory(model)
    loaded.unsafe = True  # the caller's own objects, whose code has run already: no file to distrust
    return Model(loaded)


def _in_memory(model):
    """A keras.Model instance of Keras 3 or tf_keras, whatever module its class comes from (a
    keras-hub backbone, a subclass of the user's) -> a LoadedModel. An instance of either's
    Model exists only once that package is imported, so only the ones imported are asked:
    nothing is imported here that the caller has not."""
    from tensorprobe.models.keras import LoadedModel

    for name in ("keras", "tf_keras"):
        keras = sys.modules.get(name)
        model_class = getattr(keras, "Model", None)
        if isinstance(model_class, type) and isinstance(model, model_class):
            return LoadedModel(f"<in-memory {model.name}>", model, keras, f"{name} {keras.__version__}",
                               "in-memory", "")
    raise errors.UsageError(f"model: expected a path or a keras.Model, not {type(model).__name__}")


# ---- what to compute -----------------------------------------------------------------------

@dataclass
class Selection:
    """What a job computes: layers (names, a regex, all), graph tensors, gradients."""

    layers: tuple = ()
    match: str | None = None
    all_layers: bool = False
    tensors: tuple = ()
    tensor_match: str | None = None
    gradients: str | None = None  # the target: "top", "class:K", "sum", "loss:NAME"
    target_output: str | None = None
    labels: object = None  # a .npy path or an array, for loss:NAME
    training: bool = False
    jit: bool = False

    @property
    def wants_layers(self):
        return bool(self.layers or self.match or self.all_layers)

    @property
    def wants_tensors(self):
        return bool(self.tensors or self.tensor_match)

    def check(self, skip_bad):
        """Every check that needs no model, so that a wrong option fails at once, before
        TensorFlow loads the model (seconds)."""
        from tensorprobe.text import regex

        if not (self.wants_layers or self.wants_tensors):
            raise errors.UsageError("nothing selected: give --layer NAME, --match REGEX, --all, "
                                    "--tensor NAME or --tensor-match REGEX")
        regex(self.match, "--match")
        regex(self.tensor_match, "--tensor-match")
        if self.gradients is None:
            if self.labels is not None or self.target_output is not None:
                raise errors.UsageError("--labels and --target-output go with --gradients")
            return
        if self.wants_tensors:
            raise errors.UsageError("--gradients works with --layer, --match and --all, not with --tensor")
        from tensorprobe.probe import parse_target

        target = parse_target(self.gradients)
        if (target.kind == "loss") != (self.labels is not None):
            raise errors.UsageError("--target loss:NAME and --labels go together")
        if self.labels is not None and skip_bad:
            raise errors.UsageError("--labels cannot be combined with --skip-bad: the rows would no longer match")

    def options(self):
        """The selection as the options fingerprint records it."""
        gradients = None
        if self.gradients is not None:
            labels = self.labels if self.labels is None or isinstance(self.labels, (str, os.PathLike)) \
                else "<array>"
            gradients = (self.gradients, None if labels is None else os.fspath(labels), self.target_output)
        return {"layers": tuple(self.layers), "match": self.match, "all": self.all_layers,
                "tensors": tuple(self.tensors), "tensor_match": self.tensor_match,
                "training": self.training, "jit": self.jit, "gradients": gradients}


@dataclass
class _Extraction:
    plan: object  # probe.Plan: the datasets, in order
    extract: object  # (input batches, labels) -> one array per dataset
    labels: object  # the label rows (all input rows), or None
    estimate: object  # bytes -> total, for the size check; None when unknown


def _extraction(model, selection, storage, feed):
    """The plan of datasets and the compiled function that computes them."""
    from tensorprobe import probe
    from tensorprobe.backends.tfgraph.tensors import TensorPart

    graph = model.graph if selection.wants_layers else None
    plan = extract = labels = estimate = None
    if (storage.dtype or storage.reduce) and (model.loaded.model is None or selection.wants_tensors):
        # graph tensors are stored as computed: say so rather than record options not applied
        option = "--dtype" if storage.dtype else "--reduce"
        what = f"{model.path} holds only a graph" if model.loaded.model is None else "--tensor selects graph tensors"
        raise errors.UsageError(f"{option} applies to the layers of a Keras model; {what}, stored as computed")
    if selection.wants_layers:
        plan = probe.plan(graph, probe.select(graph, selection.layers, selection.match, selection.all_layers))
        keras_graph = model.loaded.model is not None
        if not keras_graph and selection.gradients is not None:
            raise errors.UsageError(f"--gradients needs a Keras model; {model.path} holds only a graph")
        if selection.gradients is None:
            extract = _layer_function(model, plan, storage, selection.training, selection.jit)
        else:
            target = probe.parse_target(selection.gradients)
            target_origin, output_name = probe.output_origin(graph, selection.target_output)
            plan = probe.with_gradients(plan, target, output_name)
            labels = _labels(selection.labels, feed.total_rows)
            if labels is not None and feed.row_range != (0, feed.total_rows):
                labels = labels[slice(*feed.row_range)]
            label_shape = labels.shape[1:] if labels is not None else None
            extract = probe.extraction_function(graph, plan, target, target_origin, label_shape,
                                                selection.training, storage, selection.jit, _check(model))
        if keras_graph:
            estimate = lambda rows, batch_rows, plan=plan: probe.estimate_bytes(graph, plan, storage, rows,  # noqa: E731
                                                                                 batch_rows)
    if selection.wants_tensors:
        part = TensorPart.build(model.loaded, graph, selection.tensors, selection.tensor_match, plan)
        plan, extract = part.after(plan, extract)
    return _Extraction(plan, extract, labels, estimate)


def _layer_function(model, plan, storage, training=False, jit=False):
    """The compiled function that computes `plan`'s layer outputs (no gradients)."""
    from tensorprobe import probe

    if model.loaded.model is None:
        return model.graph.extraction_function(plan)
    return probe.extraction_function(model.graph, plan, training=training, storage=storage, jit=jit,
                                     check=_check(model))


def _check(model):
    """What refuses a Keras model's traced graph before it runs, unless it was opened with
    --unsafe: tf_keras' op layers call TensorFlow ops by name (backends/tfgraph/effects.py)."""
    from tensorprobe.backends.tfgraph import effects

    return effects.checker(model.path, model.loaded.unsafe)


def _labels(labels, rows):
    import numpy as np

    from tensorprobe.inputs import open_labels

    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return open_labels(os.fspath(labels), rows)
    labels = np.asarray(labels)
    if labels.ndim == 0 or len(labels) != rows or labels.dtype.kind not in "biuf":
        raise errors.InputError(f"--labels: {len(labels) if labels.ndim else 0} numeric rows for "
                                f"{rows} input samples")
    return labels


# ---- inputs ----------------------------------------------------------------------------------

def preparation(resize="stretch", interpolation="bilinear", size=None, preprocess=None, scale=None,
                offset=None, skip_bad=False):
    """How inputs are prepared (dump's input options; `resize="none"` refuses other sizes). The
    CLI's click options check what this checks itself."""
    from numbers import Real

    from tensorprobe.inputs.options import INTERPOLATIONS, RESIZE_MODES, Options

    with _api_names():
        for value, choices, option in ((resize, (*RESIZE_MODES, "none"), "--resize"),
                                       (interpolation, INTERPOLATIONS, "--interpolation")):
            if value not in choices:
                raise errors.UsageError(f"{option} {value!r}: choose from {', '.join(choices)}")
        for value, option in ((scale, "--scale"), (offset, "--offset")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                raise errors.UsageError(f"{option} {value!r}: expected a number")
        return Options(resize=resize, interpolation=interpolation, size=size, preprocess=preprocess,
                       scale=1.0 if scale is None else scale, offset=0.0 if offset is None else offset,
                       skip_bad=skip_bad)


def _feed(model, x, named, prep, layers=True, stdin=None):
    """The checked input feed for `x`: an array, a list of arrays (one per input, in the
    model's order), a dict {input name: array or path}, a list of str for a model whose one
    input takes strings, or paths as `dump` takes them; `named`: [(input name, path)] as
    --input NAME=PATH gives them."""
    import numpy as np

    from tensorprobe.inputs import feed, lines, preprocess, spec

    keras_walk = model.loaded.model is not None and layers  # else the tensor graph's inputs
    specs = spec.from_graph(model.graph if keras_walk else model.tensor_graph)
    if isinstance(x, lines.StrList) and len(specs) == 1 and specs[0].text:
        x = np.array(x, dtype=object)  # text samples, not paths (give those as pathlib.Path)
    positional, by_name = _sources(x, named, specs)
    function = preprocess.lookup(prep.preprocess) if prep.preprocess else None
    return feed.open_feed(specs, positional, by_name, prep, stdin, function)


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _api_x(x):
    """The API's `x`: a list of str is text for a model whose one input takes strings."""
    from tensorprobe.inputs import lines

    return lines.from_api(x)


def _sources(x, named, specs):
    from tensorprobe.inputs import sources
    from tensorprobe.inputs.spec import describe_all

    if x is None or _is_path(x) or (isinstance(x, (list, tuple)) and all(_is_path(p) for p in x)):
        paths = [] if x is None else [x] if _is_path(x) else list(x)
        return sources.gather([os.fspath(p) for p in paths], named)
    if isinstance(x, (list, tuple)) and len(specs) == 1 and len(x) == 1 and hasattr(x[0], "shape"):
        x = x[0]  # [array] for a model with one input, as Keras takes it
    if isinstance(x, (list, tuple)) and len(specs) > 1:  # one array per input, as Keras takes them
        if len(x) != len(specs) or any(_is_path(p) for p in x):
            raise errors.UsageError(f"x: a list of {len(x)} items for the model's {len(specs)} inputs "
                                    f"({describe_all(specs)}): give one array per input, in that order, "
                                    "or a dict {input name: array or path}")
        x = {s.name: value for s, value in zip(specs, x)}
    if isinstance(x, dict):
        found = []
        for name, value in x.items():
            if _is_path(value):
                found.append((name, sources.expand([os.fspath(value)], f"x['{name}']")))
            else:
                found.append((name, [sources.in_memory(value, f"<{name}>")]))
        return [], found
    if len(specs) > 1:
        raise errors.UsageError(f"x: the model has {len(specs)} inputs ({describe_all(specs)}): give a list "
                                "of arrays in that order, or a dict {input name: array or path}")
    return [sources.in_memory(x, "<array>")], []


# ---- running ---------------------------------------------------------------------------------

@dataclass
class DumpResult:
    """What a dump did: its summary (`summary --json`), the inputs skipped as bad, the
    datasets holding NaN or Inf, and whether --resume found it already done."""

    summary: dict
    skipped: list = field(default_factory=list)
    nonfinite: list = field(default_factory=list)
    resumed: bool = False


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
    from tensorprobe import runner
    from tensorprobe.probe import Storage
    from tensorprobe.store import MemorySink

    prep = preparation(**prepare)
    _check_batch_size(batch_size)
    with _api_names():
        selection = Selection(_names(layers, "layers"), match, all_layers, _names(tensors, "tensors"), tensor_match,
                              gradients, target_output, labels, training)
        selection.check(prep.skip_bad)
        model = load(model)
        source = _feed(model, _api_x(x), (), prep, selection.wants_layers)
        job = _extraction(model, selection, Storage(), source)
        sink = MemorySink(job.plan.specs, rows=source.rows)
        runner.dump(job.extract, source.batches(batch_size), sink, None, job.labels)
        return sink.finish()


def dump(model, x, output, *, layers=(), match=None, all_layers=False, tensors=(), tensor_match=None,
         gradients=None, target_output=None, labels=None, training=False, batch_size=32,
         overwrite=False, dtype=None, compression=None, reduce=None, shard=None, resume=False,
         max_bytes=None, jit=False, progress=None, **prepare):
    """Write the activations of `x` to the HDF5 file `output`, exactly as `tensorprobe dump`
    does (streamed a batch at a time, written atomically, every row checked), and return the
    summary `tensorprobe summary --json` prints. Arguments as `activations`'s, and:
    `dtype` ("float16", ...), `compression` ("gzip:4", "lzf"), `reduce` ("mean", "max"),
    `shard` ("K/N"), `resume`, `max_bytes`, `progress=True` for a progress bar (works in
    Jupyter).

        >>> summary = tensorprobe.dump("sample_models/transfer.keras", x, "acts.h5",
        ...                            layers=["block1_conv2"])
        >>> summary["samples"]
        4
    """
    from tensorprobe.probe import Storage, parse_compression

    from tensorprobe import store

    prep = preparation(**prepare)
    _check_batch_size(batch_size)
    with _api_names():
        selection = Selection(_names(layers, "layers"), match, all_layers, _names(tensors, "tensors"), tensor_match,
                              gradients, target_output, labels, training, jit)
        store.check_hdf5_name(output, "--output")  # as the CLI's --output is checked
        storage = Storage(dtype, reduce, parse_compression(compression) if compression else (None, None))
        bar = progress_bar() if progress is True else progress or None
        result = run_dump(model, _api_x(x), (), output, selection, prep, storage, batch_size=batch_size,
                          overwrite=overwrite, shard=shard, resume=resume, max_bytes=max_bytes,
                          progress=bar)
        return _summary_record(result.summary, output)


def run_dump(model, x, named, output, selection, prep, storage, *, batch_size=32, overwrite=False,
             shard=None, resume=False, max_bytes=None, progress=None, stdin=None, attrs=None,
             on_size=None):
    """The dump pipeline behind `dump` and the CLI: returns a DumpResult.

    `progress(total)`: a context manager yielding `advance(n)`, or None. `attrs`: root
    attributes to add (the CLI's `command`). `on_size(bytes, free)`: told the estimated
    size before the work starts."""
    from tensorprobe import runner, store
    from tensorprobe import shard as sharding

    selection.check(prep.skip_bad)
    if isinstance(shard, str):
        shard = sharding.parse(shard)
    output = os.fspath(output)
    if not (resume and os.path.exists(output)):
        store.check_output(output, overwrite)
    limit = _max_bytes(max_bytes)
    model = open_model(model)
    source = _feed(model, x, named, prep, selection.wants_layers, stdin)
    options = {**selection.options(), "model_sha256": model.loaded.sha256, "dtype": storage.dtype,
               "reduce": storage.reduce, "signature": getattr(getattr(model.loaded, "signature", None), "name", None),
               "prepare": prep.attrs(), "size": prep.size, "skip_bad": prep.skip_bad,
               "raw_quantized": getattr(model.loaded, "raw_quantized", False)}
    job, source_bytes = _job_attrs(source, shard, options, _arrays(x))
    if resume and os.path.exists(output) and _resumed(output, job, overwrite):
        return DumpResult(store.read_summary(output), resumed=True)
    extraction = _extraction(model, selection, storage, source)
    if extraction.estimate is not None:
        needed = extraction.estimate(source.rows, batch_size)
        if needed is not None:
            needed += store.dump_bytes([], source.rows, batch_size, source_bytes)
            free = store.check_room(output, needed, limit)
            if on_size is not None:
                on_size(needed, free)
    root = {**_root_attrs(model.loaded, prep), **(attrs or {}), **job, "training": selection.training,
            "reduce": storage.reduce or "none", "dtype": storage.dtype or "as computed",
            "compression": compression_text(storage)}
    with store.DumpWriter(output, extraction.plan.specs, root, overwrite, storage.compression,
                          rows=source.rows, max_bytes=limit, source_bytes=source_bytes,
                          batch_rows=batch_size) as writer:
        with progress(source.rows) if progress is not None else contextlib.nullcontext() as advance:
            skipped = runner.dump(extraction.extract, source.batches(batch_size), writer, advance,
                                  extraction.labels)
        writer.finish()
    return DumpResult(store.read_summary(output), skipped, writer.nonfinite())


def _job_attrs(source, shard, options, arrays=()):
    """The root attributes that tie a dump to its inputs and options (and, for a shard, its
    rows), and the UTF-8 bytes its /inputs/source will hold; selects the shard's rows of
    `source`. `input_contents` fingerprints what the files of the dump's own rows hold (and
    `arrays`, the arrays in memory): see shard.contents_fingerprint."""
    from tensorprobe import shard as sharding

    job = {"total_rows": source.rows, "input_fingerprint": source.fingerprint(),
           "options_fingerprint": sharding.options_fingerprint(options)}
    if shard is not None:
        rows = shard.rows(source.rows)
        job = {"shard": str(shard), "shard_rows": list(rows), **job}
        source.select(*rows)
    files, source_bytes = _row_files(source)
    job[sharding.CONTENTS] = sharding.contents_fingerprint(files, arrays)
    return job, source_bytes


def _row_files(source):
    """The files of the rows `source` feeds, in order, and an upper bound of the UTF-8 bytes of
    their /inputs/source entries (`name=file; ...` where inputs come from different files)."""
    from tensorprobe import shard as sharding

    streams = source.streams
    joined = 0 if len(streams) == 1 else sum(len(s.spec.name.encode()) + 3 for s in streams)
    files, size = {}, 0
    for labels in zip(*(stream.all_sources() for stream in streams)):
        size += joined
        for label in labels:
            size += len(label.encode("utf-8", "surrogateescape"))
            files[sharding.source_file(label)] = None
    return list(files), size


def _arrays(x):
    """The arrays in memory among `x` (the Python API's), for the input contents fingerprint."""
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else [x]
    return [v for v in values if v is not None and not isinstance(v, (str, os.PathLike))]


def _resumed(output, job, overwrite):
    """With `resume` and an existing output: True when it is this job's complete output (the
    work is skipped); False to redo it with `overwrite`; otherwise refused."""
    from tensorprobe import store

    what = "shard" if "shard" in job else "dump"
    if store.is_output_of(output, job):
        return True
    if not overwrite:
        raise errors.OutputExistsError(f"--output '{output}' exists and is not this {what}'s complete output "
                                       "(other inputs, input contents, options or shard); pass --overwrite "
                                       "to replace it")
    store.check_output(output, overwrite)
    return False


def _root_attrs(loaded, prep):
    from datetime import datetime, timezone

    import tensorflow as tf

    from tensorprobe import __version__

    return {
        **prep.attrs(),
        "tensorprobe_version": __version__,
        "model": loaded.path,
        "model_sha256": loaded.sha256,
        "model_format": loaded.format,
        "loader": loaded.loader,
        "tensorflow_version": tf.__version__,
        "keras_version": loaded.keras.__version__ if loaded.keras is not None else "",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "tensorprobe.dump"],
    }


def compression_text(storage):
    name, level = storage.compression
    return "none" if name is None else name if level is None else f"{name}:{level}"


def _max_bytes(value):
    if value is None or isinstance(value, int):
        return value
    return parse_size(value)


def _check_batch_size(batch_size):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise errors.UsageError(f"batch_size {batch_size!r}: expected an integer >= 1")


def progress_bar(console=None):
    """A `progress` for run_dump/run_compare: a rich bar on `console` (None: stderr, which
    Jupyter renders in the notebook)."""
    from tensorprobe.progress import bar

    return lambda total: bar(total, console)


def _summary_record(summary, output):
    from tensorprobe.report import summary_record

    return summary_record(summary, output)


# ---- comparing two models --------------------------------------------------------------------

def compare(model_a, model_b, x, *, layers=(), match=None, pairs=None, rtol=None, atol=None, metric=None,
            batch_size=32, save_a=None, save_b=None, overwrite=False, **prepare):
    """Run two models on the same inputs and compare the layers both have, paired by path:
    what `tensorprobe compare --json` prints (`pairs` in model A's order, each with `status`
    "ok" or "differ"; `first_divergence`, the first pair out of tolerance, or None;
    `criterion`, the rule used and why). `layers`: a name or a list of names in A; `pairs`:
    {path in A: path in B} (or [(A, B)]) where names differ. The criterion: `metric`
    "scaled:X", "snr:DB", "cosine:X" or "allclose" (numpy's rule with `rtol`/`atol`, which
    `rtol`/`atol` alone mean too); None: the default for the two models' precisions (scaled:1e-4
    for float32 against float32, snr:20 where either is quantized or half precision).
    `x`: as `activations` takes it; model B's inputs are fed by name (by position when the
    two models name them differently). `save_a`/`save_b`: also write each model's outputs
    to a dump.

        >>> report = tensorprobe.compare("model.keras", "model_export/", x)
        >>> report["first_divergence"]    # None: every pair within tolerance
    """
    from tensorprobe import modelcompare, store, text

    prep = preparation(**prepare)
    _check_batch_size(batch_size)
    with _api_names():
        criterion = modelcompare.parse_metric(metric, rtol, atol)  # before any model is loaded
        text.regex(match, "--match")
        for path, option in ((save_a, "--save-a"), (save_b, "--save-b")):
            if path is not None:
                store.check_hdf5_name(path, option)
        return run_compare(model_a, model_b, _api_x(x), (), prep, layers=_names(layers, "layers"), match=match,
                           pairs=_pairs(pairs), criterion=criterion, batch_size=batch_size, save_a=save_a,
                           save_b=save_b, overwrite=overwrite)


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
        raise errors.UsageError(f"{argument}: expected a name or a list of names, not {type(value).__name__}") \
            from None
    for name in names:
        if not isinstance(name, str):
            raise errors.UsageError(f"{argument}: expected names (strings), got {name!r}")
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
            raise errors.UsageError(f"pairs: expected {{A path: B path}} or [(A path, B path)], got {item!r}")
        result.append(tuple(item))
    return tuple(result)


def run_compare(model_a, model_b, x, named, prep, *, layers=(), match=None, pairs=(), criterion=None,
                batch_size=32, save_a=None, save_b=None, overwrite=False, stdin=None, progress=None):
    """The comparison behind `compare` and the CLI: a dict (see tensorprobe/modelcompare.py).
    `criterion`: a modelcompare.Criterion, or None for the default by the models' precisions."""
    from tensorprobe import modelcompare as comparing
    from tensorprobe import probe, store
    from tensorprobe.probe import Storage

    for path, option in ((save_a, "--save-a"), (save_b, "--save-b")):
        if path is not None:
            store.check_output(os.fspath(path), overwrite, option)
    model_a, model_b = open_model(model_a), open_model(model_b)
    precisions = {"a": comparing.precision(model_a), "b": comparing.precision(model_b)}
    if criterion is None:
        criterion = comparing.default_criterion(precisions["a"], precisions["b"])
    order, inputs_note = comparing.input_order(model_a.inputs, model_b.inputs)
    paired, only_a, only_b = comparing.pairings(model_a.graph, model_b.graph, layers, match, pairs)
    plan_a = probe.plan(model_a.graph, [model_a.graph.entries[a] for a, _ in paired])
    plan_b = probe.plan(model_b.graph, [model_b.graph.entries[b] for _, b in paired])
    matched, unmatched_a, unmatched_b = comparing.matched_specs(plan_a, plan_b, paired)
    source = _feed(model_a, x, named, prep, stdin=stdin)
    run_a = _layer_function(model_a, plan_a, Storage())
    run_b = _layer_function(model_b, plan_b, Storage())
    comparison = comparing.Comparison(matched, source.rows, criterion)
    with contextlib.ExitStack() as stack:
        writers = [_compare_writer(stack, path, option, model, plan, prep, source.rows, overwrite)
                   for path, option, model, plan in ((save_a, "--save-a", model_a, plan_a),
                                                     (save_b, "--save-b", model_b, plan_b))]
        advance = stack.enter_context(progress(source.rows)) if progress is not None else None
        for batch in source.batches(batch_size):
            values_a = run_a(batch.arrays, None)
            values_b = run_b([batch.arrays[k] for k in order], None)
            comparison.update(values_a, values_b)
            for writer, values in zip(writers, (values_a, values_b)):
                if writer is not None:
                    writer.append(batch.sources, values)
            if advance is not None:
                advance(batch.consumed)
        for writer in writers:
            if writer is not None:
                writer.finish()
    records = comparison.pairs()
    first = next((r["path"] for r in records if r["status"] != "ok"), None)
    for record, key in zip(records, comparing.node_keys(model_b, plan_b, matched)):
        record["node_b"] = key  # model B's tensor name (or layer path), for Model Explorer
    fused_in_b, fused_in_a = comparing.fused(model_b.graph, only_a), comparing.fused(model_a.graph, only_b)
    return {
        "a": model_a.path, "b": model_b.path, "samples": source.rows,
        "metric": str(criterion), "rtol": criterion.rtol, "atol": criterion.atol,
        "criterion": criterion.describe(), "precision": precisions,
        "inputs": [{"a": model_a.inputs[k]["name"], "b": spec["name"]} for k, spec in zip(order, model_b.inputs)],
        "inputs_by_position": inputs_note,
        "pairs": records, "first_divergence": first,
        "only_in_a": [p for p in only_a if p not in fused_in_b] + unmatched_a,
        "only_in_b": [p for p in only_b if p not in fused_in_a] + unmatched_b,
        "fused_in_a": fused_in_a, "fused_in_b": fused_in_b,
        "match": first is None,
    }


def _compare_writer(stack, path, option, model, plan, prep, rows, overwrite):
    from tensorprobe import store

    if path is None:
        return None
    attrs = {**_root_attrs(model.loaded, prep), "total_rows": rows, "training": False, "reduce": "none",
             "dtype": "as computed", "compression": "none"}
    return stack.enter_context(store.DumpWriter(os.fspath(path), plan.specs, attrs, overwrite, rows=rows,
                                                option=option))


# ---- reading and comparing dumps -----------------------------------------------------------

class DumpFile(Mapping):
    """A dump opened for reading, and a read-only mapping {dataset name: h5py dataset}:
    `file[name]` (read lazily, `[:]` or slices), `name in file`, `list(file)` and `keys()`
    (its dataset names, in model order), `len(file)`, `items()`; `attrs` (the root
    attributes), `names` (the same list as `list(file)`), `summary()`. Use it as a context
    manager, or call close().

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
        with _api_names():
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
        return self._file[full]

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

        with _api_names():
            return _summary_record(store.read_summary(self.path, self.allow_incomplete), self.path)

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


def diff(a, b, *, rtol=1e-5, atol=1e-8, only=None, allow_incomplete=False):
    """Compare two dumps dataset by dataset: what `tensorprobe diff --json` prints (its
    `match` is True when every dataset matches)."""
    from tensorprobe import dumpdiff

    with _api_names():
        return dumpdiff.diff_dumps(os.fspath(a), os.fspath(b), rtol, atol, only, allow_incomplete)
