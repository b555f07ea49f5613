"""A Keras model's extraction function: the layer walk (graph.py) compiled with tf.function,
with gradients under a GradientTape, values reduced and cast inside it; and the size the
datasets will take, from the symbolic shapes."""

import re

from tensorprobe import errors
from tensorprobe.errors import InputError, UsageError
from tensorprobe.probe import SAME_FOR_EVERY_SAMPLE, Storage, target_option
from tensorprobe.text import dtype_name, tf_error_line


def output_origin(graph, name):
    """The origin of the model output that --target-output NAME picks (a name or an index);
    with NAME None, the model's only output. Returns (origin, output name)."""
    names = graph.output_names()
    if name is None:
        if len(names) > 1:
            raise UsageError(
                f"the model has {len(names)} outputs ({', '.join(names)}); "
                f"choose one with {errors.name('target_output')} NAME", argument="target_output"
            )
        return graph.outputs[0], names[0]
    if name in names:
        return graph.outputs[names.index(name)], name
    if name.isdigit() and int(name) < len(names):
        return graph.outputs[int(name)], names[int(name)]
    raise UsageError(f"{errors.name('target_output')} '{name}': the model's outputs are {', '.join(names)}",
                     argument="target_output")


def extraction_function(graph, plan, target=None, target_origin=None, label_shape=None,
                        training=False, storage=None, jit=False, check=None, counts=False):
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
    `check`, if given, is called with each traced concrete function before it first runs
    (effects.checker: refuse ops that act outside the computation). With `counts`, every
    value (activation or gradient) is reduced inside the function to its non-finite counts
    per sample (stats.COUNTS), so only those leave it.
    """
    import tensorflow as tf

    # autograph=False (Compiled): the walk is plain Python with no tensor-dependent control
    # flow, and letting AutoGraph convert it (and every function it calls) made tracing VGG16
    # take 10 s instead of 0.6 s. A `call` decorated with tf.function (the way to ask for
    # AutoGraph) is still converted: graph.py runs it through tf.autograph.to_graph.
    finish = _counter() if counts else _finisher(storage or Storage())
    shared = [s.extra.get(SAME_FOR_EVERY_SAMPLE, False) for s in plan.specs if s.group == "activations"]
    extra_specs = []  # the labels'
    if target is None:
        extract = _forward(graph, plan, shared, finish, training)
    else:
        extract = _backward(graph, plan, shared, finish, training, target, target_origin)
        if target.kind == "loss":  # one label row per sample, of `label_shape`
            extra_specs.append(tf.TensorSpec(shape=(None, *label_shape), dtype=tf.float32, name="labels"))
    compiled = Compiled(extract, graph.inputs, extra_specs, jit, check)

    def run(batch, labels=None):
        """One batch: a list of input arrays (and labels) -> a list of arrays."""
        return compiled(batch, [labels] if labels is not None else [])

    run.compiled = compiled
    return run


def _per_sample(values, inputs, shared):
    """Values the same for every sample (first axis 1) repeated along the batch."""
    import tensorflow as tf

    rows = tf.shape(inputs[0])[0]
    return [tf.broadcast_to(v, tf.concat([[rows], tf.shape(v)[1:]], 0)) if same else v
            for v, same in zip(values, shared)]


def _forward(graph, plan, shared, finish, training):
    """inputs -> the plan's values, calling only the layers they depend on."""
    needed = graph.needed(plan.origins)

    def extract(*inputs):
        values = graph.evaluate(list(inputs), plan.origins, needed, training=training)
        return [finish(v) for v in _per_sample(values, inputs, shared)]

    return extract


def _backward(graph, plan, shared, finish, training, target, target_origin):
    """inputs[, labels] -> the plan's activations, then the gradients of the per-sample
    target with respect to them (none for a value the same for every sample)."""
    import tensorflow as tf

    origins = plan.origins + [target_origin]
    needed = graph.needed(origins)
    score = _score_function(graph, target, target_origin)
    count = len(graph.inputs)

    def extract(*args):
        inputs, labels = list(args[:count]), (args[count] if len(args) > count else None)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            values = graph.evaluate(inputs, origins, needed, watch=tape.watch, training=training)
            activations, output = values[:-1], values[-1]
            per_sample_score = score(output, labels)
        grads = tape.gradient(per_sample_score, activations, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [g for g, same in zip(grads, shared) if not same]
        return [finish(v) for v in _per_sample(activations, inputs, shared) + grads]

    return extract


class Compiled:
    """`function(*inputs, *extra)` compiled with tf.function: traced once per shape of the
    inputs' open axes (the batch axis aside, which stays open), with `extra_specs` (labels,
    patches) after the inputs; `check(concrete function)` before a trace first runs. A
    channels-first convolution this device runs only under XLA switches the whole function
    to XLA (`xla`); `jit` asks for XLA from the start. Calling it runs one batch: arrays in,
    NumPy arrays out; a batch the model cannot compute is an InputError."""

    def __init__(self, function, inputs, extra_specs=(), jit=False, check=None):
        self.function, self.extra_specs, self.check = function, list(extra_specs), check
        self.specs = [(tuple(t.shape), dtype_name(t.dtype)) for t in inputs]
        self.xla = jit
        self.traced = {}  # (the sample shapes, XLA) -> the tf.function
        self.last = None  # the tf.function of the last batch, for inspection

    def _for(self, batch, xla):
        import tensorflow as tf

        signature = [
            tf.TensorSpec(shape=_traced_shape(shape, x), dtype=dtype, name=f"input_{i}")
            for i, ((shape, dtype), x) in enumerate(zip(self.specs, batch))
        ] + self.extra_specs
        key = (tuple(spec.shape for spec in signature), xla)
        if key not in self.traced:
            function = tf.function(self.function, input_signature=signature, jit_compile=xla or None,
                                   autograph=False)
            if self.check is not None:  # traced here, once: the call below reuses this trace
                self.check(function.get_concrete_function())
            self.traced[key] = function
        self.last = self.traced[key]
        return self.last

    def __call__(self, batch, extra=()):
        import tensorflow as tf

        args = [*batch, *extra]
        try:
            function = self._for(batch, self.xla)
            try:
                return [t.numpy() for t in function(*args)]
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
                # A channels_first convolution or pooling that this device runs only under XLA
                # (TensorFlow's CPU kernels without oneDNN take NHWC only), as Keras' TF backend
                # compiles the convolutions it knows to be missing there: from now on, compile
                # the whole function with XLA. Only for such an op: XLA would turn other
                # errors (an index out of range) into values.
                if self.xla or not _channels_first_op_failed(function, e):
                    raise
                self.xla = True
                return [t.numpy() for t in self._for(batch, True)(*args)]
        except (ValueError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            # shapes that do not fit the model (labels against the output, say) surface here
            raise InputError(f"the model could not compute this batch: {tf_error_line(e)}") from e


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
    shape is not known before running, or a value is a string (its length is not: the writer
    checks the size once the first batch gives it)."""
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
        if dtype_name(tensor.dtype) == "string":
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


def _counter():
    """The last step inside the compiled function for `nanhunt`: a value -> (batch, 3) int64,
    its NaN, +Inf and -Inf counts per sample (stats.COUNTS); zeros for values that cannot
    hold them (integers, booleans, strings)."""
    import tensorflow as tf

    def count(value):
        rows = tf.shape(value)[0]
        if not value.dtype.is_floating:
            return tf.zeros(tf.stack([rows, 3]), tf.int64)
        flat = tf.reshape(value, tf.stack([rows, -1]))
        inf = tf.constant(float("inf"), flat.dtype)
        found = [tf.math.is_nan(flat), tf.equal(flat, inf), tf.equal(flat, -inf)]
        return tf.stack([tf.reduce_sum(tf.cast(f, tf.int64), axis=1) for f in found], axis=1)

    return count


def _score_function(graph, target, origin):
    """output (batch, ...) [, labels] -> one score per sample, as the model computes it."""
    import tensorflow as tf

    symbolic = graph.tensor(origin)
    size = 1
    for d in symbolic.shape[1:]:
        size *= int(d) if d is not None else 1
    if target.kind == "class":
        if None not in tuple(symbolic.shape[1:]) and target.value >= size:
            raise UsageError(f"{target_option()} {target}: the output has {size} values per sample",
                             argument="gradients")
        return lambda out, labels: tf.reshape(out, (tf.shape(out)[0], -1))[:, target.value]
    if target.kind == "top":
        return lambda out, labels: tf.reduce_max(tf.reshape(out, (tf.shape(out)[0], -1)), axis=1)
    if target.kind == "sum":
        return lambda out, labels: tf.reduce_sum(tf.reshape(out, (tf.shape(out)[0], -1)), axis=1)
    try:
        loss = graph.keras.losses.get(target.value)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{target_option()} {target}: unknown Keras loss '{target.value}'",
                         argument="gradients") from e
    if loss is None or isinstance(loss, type):
        raise UsageError(f"{target_option()} {target}: unknown Keras loss '{target.value}'", argument="gradients")

    def per_sample_loss(out, labels):
        value = tf.convert_to_tensor(loss(tf.cast(labels, out.dtype), out))
        value = tf.reshape(value, (tf.shape(out)[0], -1))  # a loss per sample, or per position
        return tf.reduce_mean(value, axis=1)

    return per_sample_loss


