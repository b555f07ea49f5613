"""A Keras model (Keras 3 or tf_keras) as a backend: its layers from the walk (graph.py), its
tensors from the traced forward pass (or the signature of the Keras 2 SavedModel it was
rebuilt from), run by the compiled walk (runner.py)."""

from tensorprobe.backends import base


class KerasBackend(base.Backend):
    """A keras.Model from a file, a Keras 2 SavedModel rebuilt by tf_keras (`signature` is
    then the folder's signature, whose graph gives the tensors), or the caller's own."""

    kind = "Keras model"

    def __init__(self, path, model, keras, loader, format, sha256, signature=None, naming=None):
        super().__init__()
        self.path, self.model, self.keras, self.loader, self.format, self.sha256 = (
            path, model, keras, loader, format, sha256)
        self.signature = signature  # a tfgraph.savedmodel.Signature, or None
        self._naming = naming  # how the tensor graph's scopes name layers (scopes.Naming), when the loader knows
        self.saved_object = None  # keeps a SavedModel signature's variables alive

    def _build_layer_graph(self):
        from tensorprobe.backends.keras.graph import unroll

        return unroll(self.model, self.keras)

    def _build_tensor_graph(self):
        from tensorprobe.backends.tfgraph import effects, tensors

        if self.signature is not None:
            return tensors.from_signature(self.signature)
        built = tensors.from_keras(self.model)
        built.path = self.path
        if not self.unsafe:  # listed, but refused to run (extraction_function)
            built.effects = effects.find(built.graph_def)
        return built

    def describe(self):
        from tensorprobe.backends.keras.describe import describe

        return describe(self.model, self.layer_graph)

    def input_specs(self, layers=True):
        from tensorprobe.inputs.spec import from_tensors

        if not layers:
            return super().input_specs(layers)
        graph = self.layer_graph
        return from_tensors(graph.inputs, graph.input_names(), graph.data_format())

    # ---- running ---------------------------------------------------------------------------

    def check(self, request):
        """A Keras model honours every request but max_live_bytes (its values come together)."""
        self.check_chunks(request.max_live_bytes)

    def runner(self, plan, request):
        from tensorprobe import probe
        from tensorprobe.backends.keras import runner

        graph = self.layer_graph
        if request.target is None:
            return plan, runner.extraction_function(graph, plan, training=request.training,
                                                    storage=request.storage, jit=request.jit, check=self._check(),
                                                    counts=request.counts)
        target_origin, output_name = runner.output_origin(graph, request.target_output)
        plan = probe.with_gradients(plan, request.target, output_name)
        run = runner.extraction_function(graph, plan, request.target, target_origin, request.label_shape,
                                         request.training, request.storage, request.jit, self._check(),
                                         request.counts)
        return plan, run

    def submodel(self, layers=(), match=None):
        if self.signature is not None:  # a Keras 2 SavedModel: its layers run as tf_keras rebuilt them
            return super().submodel(layers, match)
        from tensorprobe.backends.keras.submodel import build

        return build(self, layers, match)

    def edit_runner(self, edits, selection, rows, baseline=True):
        from tensorprobe import probe
        from tensorprobe.backends.keras import interventions

        graph = self.layer_graph
        selected = (probe.select(graph, selection.layers, selection.match, selection.all_layers)
                    if selection.wants_layers else [])
        plan = interventions.output_plan(graph, selected)
        found = interventions.sites(graph, edits, rows)
        run = interventions.edit_function(graph, plan, found, len(graph.outputs), selection.training, baseline,
                                          self._check())
        return plan, run

    def patch_runner(self, selection, positions, metric, target_output=None):
        from tensorprobe import probe
        from tensorprobe.backends.keras import interventions

        graph = self.layer_graph
        selected = probe.select(graph, selection.layers, selection.match, selection.all_layers)
        return interventions.sweep(graph, selected, positions, metric, target_output, self._check())

    def replay(self, origin):
        """A node of the walk, called again on the values given (graph.NodeCall): the layer
        object itself, with the model's weights."""
        key, j = origin
        if key is None:
            return "it is a model input"
        call = self.layer_graph.calls.get(key)
        if call is None:
            return "it is recorded inside its parent layer while that runs"

        def run(values, training=False):
            import numpy as np
            import tensorflow as tf

            from tensorprobe.errors import InputError
            from tensorprobe.text import tf_error_line

            try:
                return np.asarray(call.invoke([tf.convert_to_tensor(v) for v in values], training)[j])
            except (ValueError, TypeError, tf.errors.OpError) as e:
                raise InputError(tf_error_line(e)) from e

        return list(call.arguments), run

    def _check(self):
        """What refuses the traced graph before it runs, unless the model was opened with
        --unsafe: tf_keras' op layers call TensorFlow ops by name (tfgraph/effects.py)."""
        from tensorprobe.backends.tfgraph import effects

        return effects.checker(self.path, self.unsafe)

    def estimate(self, plan, storage):
        from tensorprobe.backends.keras import runner

        graph = self.layer_graph
        return lambda rows, batch_rows: runner.estimate_bytes(graph, plan, storage, rows, batch_rows)

    def layer_of(self, tensor_name):
        """The layer of a tensor of the traced graph: found in its name scopes, as for a
        SavedModel (the walk's layers are not the graph's ops)."""
        if self._scopes is None:
            from tensorprobe.backends.tfgraph import scopes

            self._scopes = scopes.find_layers(self.tensor_graph, self.scope_naming())
        return self._scopes.layer_of(tensor_name)

    _scopes = None

    def scope_naming(self):
        """How the tensor graph's scopes name the layers: as the loader says (a Keras 2
        SavedModel's object graph); a model that tf_keras loaded names its layers itself;
        else Keras 3's `_N` suffixes."""
        from tensorprobe.backends.tfgraph import scopes

        if self._naming is not None:
            return self._naming
        if self.keras.__name__ == "tf_keras":
            Layer, Model = self.keras.layers.Layer, self.keras.Model
            layers = [self.model, *(m for m in self.model.submodules if isinstance(m, Layer))]
            return scopes.Naming(True, frozenset(layer.name for layer in layers),
                                 frozenset(layer.name for layer in layers if isinstance(layer, Model)))
        return scopes.KERAS3

    # ---- what it is ------------------------------------------------------------------------

    def title_parts(self):
        return [f"signature {self.signature.name}"] if self.signature is not None else []

    def keras_version(self):
        return self.keras.__version__

    def fingerprint(self):
        return {"signature": self.signature.name if self.signature is not None else None, "raw_quantized": False}

    def precision(self):
        """A mixed-precision policy's half compute dtype, or a quantized layer's mode
        (`layer.quantize("int8")`), the narrowest; else float32."""
        found = set()
        for entry in self.layer_graph.entries.values():
            compute = str(getattr(entry.layer, "compute_dtype", None))  # Keras layers and operations alike
            found.add(compute if compute in base.HALF else None)
            policy = getattr(entry.layer, "dtype_policy", None)
            found.add(str(getattr(policy, "quantization_mode", None)))
        return base.narrowest(found)

    def node_keys(self, plan, indices):
        """A Keras model's nodes are its layers: the layer path."""
        return [plan.specs[j].layer for j in indices]


def from_memory(model):
    """A keras.Model instance of Keras 3 or tf_keras, whatever module its class comes from (a
    keras-hub backbone, a subclass of the user's) -> a KerasBackend; None for anything else.
    An instance of either's Model exists only once that package is imported, so only the ones
    imported are asked: nothing is imported here that the caller has not."""
    import sys

    for name in ("keras", "tf_keras"):
        keras = sys.modules.get(name)
        model_class = getattr(keras, "Model", None)
        if isinstance(model_class, type) and isinstance(model, model_class):
            backend = KerasBackend(f"<in-memory {model.name}>", model, keras, f"{name} {keras.__version__}",
                                   "in-memory", "")
            backend.unsafe = True  # the caller's own objects, whose code has run already: no file to distrust
            return backend
    return None
