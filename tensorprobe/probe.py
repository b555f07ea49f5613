"""What to extract: layer names, indexes and regexes -> a plan of datasets -> the function
that computes exactly those tensors from the model's inputs."""

import re
from dataclasses import dataclass

from tensorprobe.errors import InputError, UnknownLayerError, UsageError
from tensorprobe.store import DatasetSpec
from tensorprobe.text import did_you_mean, dtype_name, regex, tf_error_line

CONTAINER_OUTPUT = "__output__"


@dataclass
class Plan:
    specs: list  # [DatasetSpec], one per extracted tensor
    origins: list  # where each value comes from in the graph (see graph.py), same order


def select(graph, names=(), match=None, all_layers=False):
    """The LayerEntries chosen by --layer NAME..., --match REGEX and --all, in model order."""
    entries = graph.entries
    chosen = set()
    for name in names:
        path = resolve(graph, name)
        if path in chosen:
            raise UsageError(f"--layer '{name}' selects '{path}', which is already selected")
        chosen.add(path)
    # --match and --all leave out layers that never run (a Dropout inside MultiHeadAttention
    # at inference): they have no output; --layer naming one says so
    if match is not None:
        pattern = regex(match, "--match")
        found = {p for p, e in entries.items() if pattern.search(p) and e.calls}
        if not found:
            raise UnknownLayerError(f"--match '{match}' matches no layer path that has an output")
        chosen |= found
    if all_layers:
        chosen |= {p for p, e in entries.items() if e.class_name != "InputLayer" and e.calls}
    if not chosen:
        raise UsageError("no layer selected: give --layer NAME, --match REGEX or --all")
    return [entries[p] for p in entries if p in chosen]


def resolve(graph, name):
    """The path of the one layer that NAME means: a path, a unique name or path suffix, or an
    index as `tensorprobe layers` shows it ("3", "1.3")."""
    entries = graph.entries
    if name in entries:
        return name
    if re.fullmatch(r"\d+(\.\d+)*", name):
        for path, entry in entries.items():
            if entry.index == name:
                return path
        raise UnknownLayerError(f"--layer '{name}': no layer has index {name}")
    candidates = [p for p in entries if p.endswith("/" + name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UnknownLayerError(
            f"--layer '{name}' is ambiguous: it names {', '.join(candidates)}; give the full path"
        )
    raise UnknownLayerError(
        f"--layer '{name}': no such layer{did_you_mean(name, list(entries))} "
        "(`tensorprobe layers MODEL` lists them)"
    )


def plan(graph, selected):
    """Name one dataset per output of every call of every selected layer.

    `<path>` for a layer called once with one output; `<path>/call_K` per call of a layer
    called several times (shared weights); `<path>/output_I` per output of a layer with
    several outputs, or `<path>/<key>` for a layer that returns a dict. When a nested model and layers inside it are both selected, the nested
    model's own output goes to `<path>/__output__`, beside its layers' groups.
    """
    chosen = {e.path for e in selected}
    specs, origins = [], []
    # only where every input leaves its batch axis open can a leading 1 mean "every sample"
    inputs = getattr(graph, "inputs", None)
    open_batch = bool(inputs) and all(_leading_axis(t) is None for t in inputs)
    for entry in selected:
        if not entry.calls:
            fused_into = getattr(entry, "fused_into", None)  # a TFLite layer merged into another's op
            if fused_into:
                raise UsageError(f"--layer '{entry.path}' has no tensor of its own: the converter fused it "
                                 f"into the op of '{fused_into}' (dump that layer)")
            no_output = getattr(entry, "no_output", None)  # a Keras layer run only inside a loop
            if no_output:
                raise UsageError(f"--layer '{entry.path}' has no output: {no_output}")
            raise UsageError(
                f"--layer '{entry.path}' is never called in the model's graph, so it has no output"
            )
        base = entry.path
        if any(_inside(p, entry.path) for p in chosen):
            base = f"{base}/{CONTAINER_OUTPUT}"
        for k, outputs in enumerate(entry.calls):
            call_base = f"{base}/call_{k}" if len(entry.calls) > 1 else base
            for i, (symbolic, origin) in enumerate(outputs):
                if entry.output_names is not None:  # a dict: its keys name the datasets
                    name = f"{call_base}/{entry.output_names[i]}"
                else:
                    name = f"{call_base}/output_{i}" if len(outputs) > 1 else call_base
                extra = {"order": len(specs)}  # model order; HDF5 lists names sorted
                # a TFLite tensor: its name, index and quantization, as on its /tensors dataset
                extra.update(getattr(symbolic, "layer_attributes", {}))
                if len(entry.calls) > 1:
                    extra["call"] = k
                if len(outputs) > 1:
                    extra["output"] = i
                specs.append(DatasetSpec(name, entry.path, entry.class_name, extra,
                                         broadcast=open_batch and _leading_axis(symbolic) == 1))
                origins.append(origin)
    return Plan(specs, origins)


def _leading_axis(tensor):
    """The static size of `tensor`'s first axis (None where open or unknown)."""
    shape = getattr(tensor, "shape", None)
    try:
        return shape[0] if shape is not None and len(shape) else None
    except TypeError:  # an unknown rank
        return None


def _inside(path, container):
    return path.startswith(container + "/")


@dataclass
class Target:
    """What --gradients differentiates, per sample: `class:K`, `top`, `sum` or `loss:NAME`."""

    kind: str
    value: object = None  # the class index, or the loss name

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def parse_target(text):
    kind, _, value = text.partition(":")
    if kind in ("top", "sum") and not value:
        return Target(kind)
    if kind == "class" and value.isdigit():
        return Target(kind, int(value))
    if kind == "loss" and value:
        return Target(kind, value)
    raise UsageError(f"--target '{text}': expected class:K, top, sum or loss:NAME")


def with_gradients(plan, target, output_name):
    """The plan plus one gradient dataset per activation, at the same path under /gradients."""
    extra = {"target": str(target), "target_output": output_name}
    grads = [DatasetSpec(s.name, s.layer, s.layer_class, {**s.extra, **extra}, "gradients")
             for s in plan.specs]
    return Plan(plan.specs + grads, plan.origins)


def output_origin(graph, name):
    """The origin of the model output that --target-output NAME picks (a name or an index);
    with NAME None, the model's only output. Returns (origin, output name)."""
    names = graph.output_names()
    if name is None:
        if len(names) > 1:
            raise UsageError(
                f"the model has {len(names)} outputs ({', '.join(names)}); "
                "choose one with --target-output NAME"
            )
        return graph.outputs[0], names[0]
    if name in names:
        return graph.outputs[names.index(name)], name
    if name.isdigit() and int(name) < len(names):
        return graph.outputs[int(name)], names[int(name)]
    raise UsageError(f"--target-output '{name}': the model's outputs are {', '.join(names)}")


@dataclass
class Storage:
    """How values are stored: --dtype (None keeps the computed dtype), --reduce (None, "mean"
    or "max" over the spatial axes), --compression (h5py's name and options)."""

    dtype: str | None = None
    reduce: str | None = None
    compression: tuple = (None, None)


def parse_compression(text):
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return (None, None)
    if name == "lzf" and not level:
        return ("lzf", None)
    if name == "gzip" and (not level or (level.isdigit() and 0 <= int(level) <= 9)):
        return ("gzip", int(level) if level else 4)
    raise UsageError(f"--compression '{text}': expected gzip[:LEVEL 0-9], lzf or none")


def extraction_function(graph, plan, target=None, target_origin=None, label_shape=None,
                        training=False, storage=None, jit=False):
    """A compiled function: (list of input batches[, labels]) -> list of arrays, one per
    plan spec.

    Without a target it calls only the layers the selected outputs depend on, with the
    model's own weights, in inference mode (or training mode). With a target it runs one forward pass to the
    chosen output under a GradientTape that watches each selected activation as it is
    produced, and returns the activations and the gradients of the per-sample target with
    respect to them (zeros for an activation the output does not depend on). The batch axis
    is left open in the signature, so a last, smaller batch runs the same compiled graph; any
    other axis the model leaves open (a sequence's length) is traced at each batch's own
    size, as Keras' eager call sees it, since layers may branch on static shapes: Keras'
    TimeDistributed over an open time axis maps over the batch size instead (Keras 3.15).
    """
    import tensorflow as tf

    # autograph=False: the walk is plain Python with no tensor-dependent control flow, and
    # letting AutoGraph convert it (and every function it calls) made tracing VGG16 take 10 s
    # instead of 0.6 s. A `call` decorated with tf.function (the way to ask for AutoGraph)
    # is still converted: graph.py runs it through tf.autograph.to_graph.
    finish = _finisher(storage or Storage())
    specs = [(tuple(t.shape), dtype_name(t.dtype)) for t in graph.inputs]
    extra_specs = []  # the labels'
    count = len(graph.inputs)
    if target is None:
        needed = graph.needed(plan.origins)

        def extract(*inputs):
            return [finish(v) for v in graph.evaluate(list(inputs), plan.origins, needed, training=training)]

    else:
        origins = plan.origins + [target_origin]
        needed = graph.needed(origins)
        score = _score_function(graph, target, target_origin)
        if target.kind == "loss":  # one label row per sample, of `label_shape`
            extra_specs.append(tf.TensorSpec(shape=(None, *label_shape), dtype=tf.float32, name="labels"))

        def extract(*args):
            inputs, labels = list(args[:count]), (args[count] if len(args) > count else None)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                values = graph.evaluate(inputs, origins, needed, watch=tape.watch, training=training)
                activations, output = values[:-1], values[-1]
                per_sample = score(output, labels)
            grads = tape.gradient(per_sample, activations,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return [finish(v) for v in list(activations) + list(grads)]

    functions = {}  # (the sample shapes, XLA) -> the compiled function

    def compiled(batch, xla):
        signature = [
            tf.TensorSpec(shape=_traced_shape(shape, x), dtype=dtype, name=f"input_{i}")
            for i, ((shape, dtype), x) in enumerate(zip(specs, batch))
        ] + extra_specs
        key = (tuple(spec.shape for spec in signature), xla)
        if key not in functions:
            functions[key] = tf.function(extract, input_signature=signature, jit_compile=xla or None,
                                         autograph=False)
        run.function = functions[key]
        return run.function

    def run(batch, labels=None):
        """One batch: a list of input arrays (and labels) -> a list of arrays."""
        args = list(batch) + ([labels] if labels is not None else [])
        try:
            function = compiled(batch, run.xla)
            try:
                return [t.numpy() for t in function(*args)]
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
                # A channels_first convolution or pooling that this device runs only under XLA
                # (TensorFlow's CPU kernels without oneDNN take NHWC only), as Keras' TF backend
                # compiles the convolutions it knows to be missing there: from now on, compile
                # the whole function with XLA. Only for such an op: XLA would turn other
                # errors (an index out of range) into values.
                if run.xla or not _channels_first_op_failed(function, e):
                    raise
                run.xla = True
                return [t.numpy() for t in compiled(batch, True)(*args)]
        except (ValueError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            # shapes that do not fit the model (labels against the output, say) surface here
            raise InputError(f"the model could not compute this batch: {tf_error_line(e)}") from e

    run.xla = jit
    run.function = None  # the compiled tf.function of the last batch, for inspection
    return run


def _traced_shape(shape, batch):
    """The model input's `shape` with its open axes, the batch axis aside, at the size they
    have in `batch` (an array); the model's own where the ranks differ (the call says so)."""
    sizes = getattr(batch, "shape", None)
    if sizes is None or len(sizes) != len(shape):
        return shape
    return (shape[0], *(d if d is not None else int(n) for d, n in zip(shape[1:], sizes[1:])))


def _channels_first_op_failed(function, error):
    """Whether the op a TensorFlow run-time `error` names ([[{{node NAME}}]]) is, in the graph
    of the compiled `function`, one with a channels-first data_format (NCHW, NCDHW, NCW)."""
    names = set(re.findall(r"\{\{node ([^}]+)\}\}", str(error)))
    if not names:
        return False
    graph = function.get_concrete_function().graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return any(n.name in names and "data_format" in n.attr and n.attr["data_format"].s.startswith(b"NC")
               for n in nodes)


def estimate_bytes(graph, plan, storage, rows, batch_rows):
    """The bytes the datasets will take in the file for `rows` samples written `batch_rows` at
    a time (store.datasets_bytes: whole chunks, their index and attributes; /inputs and the
    file's own metadata are store.dump_bytes'), from the symbolic shapes; None when a sample
    shape is not known before running."""
    import numpy as np

    from tensorprobe import store

    datasets = []
    for i, _ in enumerate(plan.specs):
        tensor = graph.tensor(plan.origins[i % len(plan.origins)])
        shape = list(tensor.shape[1:])
        if storage.reduce is not None and len(shape) >= 2:
            shape = shape[-1:]
        if any(d is None for d in shape):
            return None
        dtype = np.dtype(dtype_name(tensor.dtype))
        if storage.dtype is not None and dtype.kind == "f":
            dtype = np.dtype(storage.dtype)
        datasets.append((int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, shape[-1] if shape else 0))
    return store.datasets_bytes(datasets, rows, batch_rows)


def _finisher(storage):
    """The last step inside the compiled function: pool over the spatial axes (--reduce),
    then cast floating values to the storage dtype (--dtype)."""
    import tensorflow as tf

    def finish(value):
        if storage.reduce is not None and value.shape.rank is not None and value.shape.rank >= 3:
            axes = list(range(1, value.shape.rank - 1))
            pool = tf.reduce_mean if storage.reduce == "mean" else tf.reduce_max
            value = pool(value, axis=axes)
        if storage.dtype is not None and value.dtype.is_floating:
            value = tf.cast(value, storage.dtype)
        return value

    return finish


def _score_function(graph, target, origin):
    """output (batch, ...) [, labels] -> one score per sample, as the model computes it."""
    import tensorflow as tf

    symbolic = graph.tensor(origin)
    size = 1
    for d in symbolic.shape[1:]:
        size *= int(d) if d is not None else 1
    if target.kind == "class":
        if None not in tuple(symbolic.shape[1:]) and target.value >= size:
            raise UsageError(f"--target {target}: the output has {size} values per sample")
        return lambda out, labels: tf.reshape(out, (tf.shape(out)[0], -1))[:, target.value]
    if target.kind == "top":
        return lambda out, labels: tf.reduce_max(tf.reshape(out, (tf.shape(out)[0], -1)), axis=1)
    if target.kind == "sum":
        return lambda out, labels: tf.reduce_sum(tf.reshape(out, (tf.shape(out)[0], -1)), axis=1)
    try:
        loss = graph.keras.losses.get(target.value)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--target {target}: unknown Keras loss '{target.value}'") from e
    if loss is None or isinstance(loss, type):
        raise UsageError(f"--target {target}: unknown Keras loss '{target.value}'")

    def per_sample_loss(out, labels):
        value = tf.convert_to_tensor(loss(tf.cast(labels, out.dtype), out))
        value = tf.reshape(value, (tf.shape(out)[0], -1))  # a loss per sample, or per position
        return tf.reduce_mean(value, axis=1)

    return per_sample_loss


