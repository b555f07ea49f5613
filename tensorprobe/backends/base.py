"""The one interface a loaded model offers to everything above `backends/`.

A backend (one folder under `backends/`) opens a format and returns a `Backend`: what the
model is (path, format, loader, hash, provenance), what it holds (inputs, layers, tensors)
and how to run it (a runner for an extraction plan). The pipeline, the comparison, the CLI
and the API ask only this interface; no code above `backends/` asks which format a model is.

    backend.layer_graph        .entries {path: LayerEntry}, in model order; .inputs (each with a
                               .shape, None for the batch); .layer_of(tensor name) -> path or ''
    backend.tensor_graph       .tensors [TensorInfo], .by_name, .op_types(), .inputs (as tf.TensorSpec:
                               .name, .shape with .rank and .as_list(), .dtype with .name),
                               .input_tensors, .outputs [(name, tensor name)], .source,
                               .why_not_dumpable(info), .extraction_function(tensor names)
    backend.describe()         ModelInfo: what `tensorprobe layers` shows
    backend.input_specs(layers) [InputSpec]: what the input feed checks and prepares
    backend.runner(plan, request) -> (plan, run): run(batch list, labels) -> one array per dataset
    backend.tensor_runner(names, match, start) -> (plan, run) for graph tensors
    backend.edit_runner(edits, selection, rows) -> (plan, run): outputs with layers edited (Keras)
    backend.replay(origin)     (argument origins, run(values, training)) to recompute one layer output
                               alone from the values it reads, or why it cannot be
    backend.estimate(plan, storage) -> (rows, batch_rows) -> bytes, or None
    backend.provenance()       root attributes of a dump (format, loader, `versions()`)
    backend.fingerprint()      what else makes two dumps of one model differ (signature, ...)
    backend.precision()        'float32', or the narrowest precision it computes in
    backend.node_keys(plan, indices)  Model Explorer's keys of the plan's datasets

Records that every format fills alike (LayerEntry, LayerInfo, ModelInfo, RunRequest) live
here too. Nothing here imports TensorFlow but the default `versions()`, which names the
versions of TensorFlow and Keras for the formats they run (tests/numpy_backend.py is a
backend without them).
"""

import hashlib
from dataclasses import dataclass, field

from tensorprobe import errors
from tensorprobe.errors import UsageError


@dataclass
class LayerEntry:
    """One layer of a model at any depth, and the outputs of each of its calls. A Keras
    backend's entries hold the layer object; a graph's (`layer` None) are name scopes."""

    path: str  # "vgg16/block1_conv2"
    index: str  # position among its parent's layers at each level: "1.3"
    depth: int
    layer: object
    parent: str | None
    reach: str  # "graph": a node of a static graph; "runtime": recorded while its parent runs; "fused"
    children: list = field(default_factory=list)  # paths of the layers it contains
    calls: list = field(default_factory=list)  # per call: list of (symbolic tensor, origin)
    output_names: list | None = None  # the keys, for a layer that returns a dict
    no_output: str | None = None  # why a layer that runs has no output to dump
    fused_into: str | None = None  # reach "fused": the layer whose op computes this one's output

    @property
    def name(self):
        return self.layer.name

    @property
    def class_name(self):
        return type(self.layer).__name__

    def dataset_attributes(self, symbolic):
        """Attributes a format adds to the dataset of one of its outputs (a TFLite tensor's
        name, index and quantization)."""
        return {}


@dataclass
class LayerInfo:
    index: str  # "" for an inline operation (`x + y`), which has no place in `.layers`
    path: str
    name: str
    class_name: str
    depth: int
    output_shape: list | None  # one shape per output of the first call; None if never called
    calls: int
    params: int
    trainable: bool | None  # None where a frozen graph does not say
    reach: str  # "graph", "runtime" (recorded while its parent runs), or "fused" (TFLite)
    fused_into: str | None = None  # reach "fused": the layer whose op computes its output too

    def to_json(self):
        shapes = self.output_shape
        fused = {"fused_into": self.fused_into} if self.reach == "fused" else {}
        return {
            "index": self.index or None,
            "path": self.path,
            "name": self.name,
            "class": self.class_name,
            "depth": self.depth,
            "output_shape": shapes[0] if shapes and len(shapes) == 1 else shapes,
            "calls": self.calls,
            "params": self.params,
            "trainable": self.trainable,
            "reach": self.reach,
            **fused,
        }


@dataclass
class ModelInfo:
    name: str
    inputs: list  # [(name, shape, dtype)]
    outputs: list  # [(name, shape, dtype)]
    params: int
    trainable_params: int | None  # None for a frozen graph
    layers: list  # [LayerInfo]
    notes: list = field(default_factory=list)  # further footer lines (what a format cannot show)


@dataclass
class RunRequest:
    """How a plan of layer outputs is to be computed: `storage` (probe.Storage: dtype,
    reduce), inference or training mode, XLA, and gradients of `target` (probe.Target)
    taken from the model output `target_output`, against labels of shape `label_shape`.
    With `counts`, each value comes back as its non-finite counts instead (stats.COUNTS:
    one row per sample of NaN, +Inf and -Inf counts, int64), so that a whole model's health
    costs a few numbers per layer, not its activations (`nanhunt`)."""

    storage: object = None
    training: bool = False
    jit: bool = False
    target: object = None
    target_output: str | None = None
    label_shape: tuple | None = None
    counts: bool = False
    max_live_bytes: int | None = None  # the values one run holds for one batch, at most (Backend.CHUNKS)

    @property
    def transforms_storage(self):
        return self.storage is not None and bool(self.storage.dtype or self.storage.reduce)


class Backend:
    """A model opened by one backend. Subclasses set the attributes below in `__init__` and
    implement the methods that raise NotImplementedError; the rest has defaults that fit a
    model which is only a graph of tensors."""

    kind = "graph"  # what the messages refusing `--dtype` or `--gradients` call a model of this backend
    path: str = ""  # as the user gave it
    format: str = ""  # "keras", "h5", "savedmodel", "frozen_graph", "tflite", ...
    loader: str = ""  # "keras 3.x.y", "tensorflow 2.x", "tf.lite 2.x"
    sha256: str = ""
    unsafe: bool = False  # --unsafe: what it runs may act outside the computation

    def __init__(self):
        self._layer_graph = None
        self._tensor_graph = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.path} ({self.loader})>"

    # ---- what it holds ---------------------------------------------------------------------

    @property
    def layer_graph(self):
        """The layers (`.entries`), built once."""
        if self._layer_graph is None:
            self._layer_graph = self._build_layer_graph()
        return self._layer_graph

    @property
    def tensor_graph(self):
        """The graph of tensors (`.tensors`, `.inputs`, `.outputs`, `.source`), built once."""
        if self._tensor_graph is None:
            self._tensor_graph = self._build_tensor_graph()
        return self._tensor_graph

    def _build_layer_graph(self):
        raise NotImplementedError

    def _build_tensor_graph(self):
        raise NotImplementedError

    def describe(self):
        """ModelInfo: the layers, inputs, outputs and parameter counts."""
        raise NotImplementedError

    def input_specs(self, layers=True):
        """[InputSpec], one per model input in feed order; `layers`: the inputs the layer
        graph takes (for a Keras model that is not the traced tensor graph's)."""
        from tensorprobe.inputs.spec import from_tensors

        return from_tensors(self.tensor_graph.inputs)

    # ---- running ---------------------------------------------------------------------------

    def runner(self, plan, request):
        """(plan, run) computing `plan`'s layer outputs as `request` says; the plan grows by
        the gradient datasets where gradients are asked. Options this backend cannot honour
        are refused here, in the user's words. A graph runs as it was saved, so non-finite
        counts (`request.counts`) are taken in NumPy from each batch's values as they come
        back, one batch in memory at a time."""
        self.check(request)
        run = self.extraction(plan.origins, request.max_live_bytes)
        if request.counts:
            from tensorprobe import stats

            return plan, stats.counting(run)
        return plan, run

    def check(self, request):
        """Refuse what a graph of tensors cannot do: its values are stored as computed, in
        the mode it was saved in, with no gradients."""
        if request.target is not None:
            raise UsageError(f"{errors.name('gradients')} needs a Keras model; {self.path} holds only a "
                             f"{self.kind}", argument="gradients")
        if request.transforms_storage:
            option = "dtype" if request.storage.dtype else "reduce"
            raise UsageError(f"{errors.name(option)} applies to the layers of a Keras model; {self.path} holds "
                             f"only a {self.kind}, stored as computed", argument=option)
        if request.training:
            raise UsageError(f"{errors.name('training')} applies to a Keras model; {self.path} holds only a "
                             f"{self.kind}, which runs as it was saved", argument="training")
        self.check_chunks(request.max_live_bytes)

    # Whether the backend computes its values in chunks bounded by `max_live_bytes` (ONNX:
    # one onnxruntime session per chunk of tensors); the others refuse the option.
    CHUNKS = False

    def check_chunks(self, max_live_bytes):
        if max_live_bytes is not None and not self.CHUNKS:
            raise UsageError(f"{errors.name('max_live_bytes')} bounds the tensors an ONNX model returns at once; "
                             f"{self.path} holds a {self.kind}, whose values are computed together",
                             argument="max_live_bytes")

    def extraction(self, names, max_live_bytes=None):
        """The tensor graph's extraction function for the tensors `names` (a backend that
        CHUNKS bounds each chunk's values by `max_live_bytes`)."""
        return self.tensor_graph.extraction_function(names)

    def submodel(self, layers=(), match=None):
        """A keras.Model returning the chosen layers' outputs (tensorprobe.submodel)."""
        raise UsageError(f"model: a sub-model is built from a Keras model; '{self.path}' holds a {self.kind}",
                         argument="model")

    def edit_runner(self, edits, selection, rows, baseline=True):
        """(plan, run) computing the model's outputs (datasets of the group `outputs`) and the
        layers `selection` chooses, with `edits` ([(layer name, edits.Edit)]) applied to the
        layers' outputs before the rest of the model reads them; `run.tally` sums up what the
        edits changed (and, with `baseline`, how far the outputs moved from the unedited
        model's). `rows`: the input rows (a patch's dump holds as many). Only a model whose
        layers tensorprobe calls itself can be edited."""
        raise UsageError(f"interventions need a Keras model; {self.path} holds only a {self.kind}", argument="edits")

    def patch_runner(self, selection, positions, metric, target_output=None):
        """A sweep of activation patching over the layers `selection` chooses (Keras: see
        backends/keras/interventions.Sweep)."""
        raise UsageError(f"interventions need a Keras model; {self.path} holds only a {self.kind}", argument="edits")

    def tensor_runner(self, names, match, start=0, max_live_bytes=None):
        """(plan, run) for the graph tensors `names` and those matching `match`: datasets
        under /tensors, their `order` from `start`, each with the layer it belongs to;
        `max_live_bytes`: see CHUNKS."""
        from tensorprobe.backends import tensors

        self.check_chunks(max_live_bytes)
        graph = self.tensor_graph
        plan = tensors.plan(graph, tensors.select(graph, names, match), self.layer_of, start)
        return plan, self.extraction(plan.origins, max_live_bytes)

    def layer_of(self, tensor_name):
        """The path of the layer a graph tensor belongs to ('' for none)."""
        return self.layer_graph.layer_of(tensor_name)

    def replay(self, origin):
        """How to compute the layer output at `origin` (a plan's) again from the values it
        reads (`validate`): (the origins of those values, in order, run(values, training) ->
        the output), or a sentence saying why it cannot be. A graph's layers are name scopes
        over fused ops, not layers that can be called alone."""
        return f"a {self.kind}'s layers are name scopes over its ops, not layers to call"

    def estimate(self, plan, storage):
        """(rows, batch_rows) -> the bytes the plan's datasets take, or None when unknown."""
        return None

    # ---- what it is ------------------------------------------------------------------------

    def title(self, name):
        """'transfer (keras 3.x)', as `tensorprobe layers` titles its table."""
        parts = [name] if name else []
        parts += self.title_parts()
        return f"{', '.join(parts)} ({self.loader})" if parts else self.loader

    def title_parts(self):
        return []

    def provenance(self):
        """The root attributes of a dump that say where its values come from: the model file,
        its format and loader, and the versions of what computed them (`versions`)."""
        return {"model": self.path, "model_sha256": self.sha256, "model_format": self.format,
                "loader": self.loader, **self.versions()}

    def versions(self):
        """{attribute: version} of the libraries that compute the values: TensorFlow's and
        Keras's for the formats TensorFlow runs (imported here, once a model of theirs is
        open); a backend that runs without TensorFlow names its own runtime instead."""
        import tensorflow as tf

        return {"tensorflow_version": tf.__version__, "keras_version": self.keras_version()}

    def keras_version(self):
        return ""

    def fingerprint(self):
        """What, beyond the file and the selection, makes this model's values differ."""
        return {"signature": None, "raw_quantized": False}

    def precision(self):
        """'float32', or the narrowest of REDUCED the model computes in."""
        return "float32"

    def node_keys(self, plan, indices):
        """Model Explorer's key of each dataset `indices` of `plan`: its tensor name."""
        return [str(plan.origins[j]) for j in indices]


REDUCED = ("int4", "int8", "uint8", "float8", "int16", "float16", "bfloat16")  # narrowest first
HALF = ("float16", "bfloat16")


def narrowest(found):
    """The narrowest precision of REDUCED among `found`, else 'float32'."""
    return next((dtype for dtype in REDUCED if dtype in found), "float32")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
