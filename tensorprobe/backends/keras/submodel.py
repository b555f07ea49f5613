"""`tensorprobe.submodel`: a keras.Model over the walk (graph.py) that returns chosen layers'
outputs, nested models' layers, inline operations and custom layers' sub-layers included,
with the model's own weights.

Keras cannot build `Model(outer.inputs, nested_layer.output)` ("Graph disconnected"), so the
sub-model is a keras.Model subclass whose `call` runs `Graph.evaluate`, the walk that calls
the model's own layer objects on real tensors: the values are the ones `dump` stores, the
weights are the model's (the source model is tracked as an attribute, so the sub-model's
`trainable_variables` are its variables, and training through it trains the model), and
every operation is an ordinary TensorFlow operation, so a GradientTape differentiates it.
"""

import functools

from tensorprobe.errors import UsageError


def build(backend, layers=(), match=None):
    """A keras.Model: inputs as the model takes them -> {dataset name: tensor} of the layers
    `layers` / `match` select (probe.select and probe.plan name them, as `dump` does), and the
    model's outputs under their output names."""
    from tensorprobe import probe

    graph = backend.layer_graph
    plan = probe.plan(graph, probe.select(graph, layers, match))
    names = [s.name for s in plan.specs]
    origins = list(plan.origins)
    for name, origin in zip(graph.output_names(), graph.outputs):
        if name in names:
            if origins[names.index(name)] != origin:
                raise UsageError(f"the model output '{name}' has the name of a selected layer's value; "
                                 "leave that layer out (the output is returned anyway)")
            continue
        names.append(name)
        origins.append(origin)
    return _model_class(graph.keras)(graph, names, origins, name=f"{backend.model.name}_probe")


@functools.cache
def _model_class(keras):
    """The keras.Model subclass for the module that built the model (Keras 3 or tf_keras).
    Its methods are never converted by AutoGraph (inside a user's tf.function): the walk is
    plain Python with no tensor-dependent control flow, as the extraction compiles it
    (autograph=False), and converting it is slow and, across many models, unreliable."""
    import tensorflow as tf

    plain = tf.autograph.experimental.do_not_convert

    class ProbeSubmodel(keras.Model):
        """{name: tensor} of a model's layers, computed with the model's own layers.

        `model(x, training=False, watch=None)`: `x` as the model takes it (an array or tensor
        for one input, a list in the model's input order, or a dict by input name). `watch`,
        given a GradientTape's `watch`, is called on each returned value as soon as it is
        computed, before any layer reads it: then the tape differentiates with respect to
        those values even where no variable lies between them and the loss. `model.source`
        is the model whose weights these are."""

        def __init__(self, graph, names, origins, **kwargs):
            super().__init__(**kwargs)
            self.source = graph.model  # tracked: the sub-model's variables are the model's
            self._graph = graph
            self._names = names
            self._origins = origins
            self._needed = graph.needed(origins)
            self.output_keys = list(names)
            self.built = True  # the source model's layers are built

        @plain
        def __call__(self, inputs, *args, **kwargs):
            # the inputs are checked here, before Keras' call wraps errors in its own text
            return super().__call__(self._inputs(inputs), *args, **kwargs)

        @plain
        def call(self, inputs, training=False, watch=None):
            values = self._graph.evaluate(list(inputs), self._origins, self._needed, watch=watch,
                                          training=bool(training))
            return dict(zip(self._names, values))

        @plain
        def _inputs(self, inputs):
            import tensorflow as tf

            graph = self._graph
            names = graph.input_names()
            if isinstance(inputs, dict):
                missing = [n for n in names if n not in inputs]
                extra = sorted(set(inputs) - set(names))
                if missing or extra:
                    raise UsageError(f"the model's inputs are {', '.join(names)}; got {', '.join(map(str, inputs))}")
                inputs = [inputs[n] for n in names]
            elif isinstance(inputs, (list, tuple)):
                inputs = list(inputs)
            else:
                inputs = [inputs]
            if len(inputs) != len(graph.inputs):
                count = len(graph.inputs)
                raise UsageError(f"the model takes {count} input{'s' if count > 1 else ''} ({', '.join(names)}), "
                                 f"not {len(inputs)}")
            return [tf.convert_to_tensor(x, dtype=t.dtype) if not tf.is_tensor(x) else x
                    for x, t in zip(inputs, graph.inputs)]

        def get_config(self):
            raise NotImplementedError("a tensorprobe sub-model is not saved: save the source model "
                                      "(`model.source`) and build the sub-model again")

    return ProbeSubmodel
