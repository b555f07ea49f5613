"""A Keras model's layers, at every depth, as the plain records `tensorprobe layers` shows."""

from tensorprobe.backends.base import LayerInfo, ModelInfo
from tensorprobe.backends.keras.graph import is_layer, producer_name
from tensorprobe.text import dtype_name


def shape_of(tensor):
    return [None if d is None else int(d) for d in tensor.shape]


def describe(model, graph):
    """ModelInfo for a Keras model and its unrolled Graph."""
    layers = []
    for entry in graph.entries.values():
        layer = entry.layer
        weighted = is_layer(graph.keras, layer) and layer.built
        shapes = [shape_of(t) for t, _ in entry.calls[0]] if entry.calls else None
        layers.append(
            LayerInfo(
                index=entry.index,
                path=entry.path,
                name=entry.name,
                class_name=entry.class_name,
                depth=entry.depth,
                output_shape=shapes,
                calls=len(entry.calls),
                params=int(layer.count_params()) if weighted else 0,
                trainable=bool(layer.trainable) if is_layer(graph.keras, layer) else None,
                reach=entry.reach,
            )
        )
    trainable = sum(_size(w.shape) for w in model.trainable_weights)
    return ModelInfo(
        name=model.name,
        inputs=[_tensor_record(t, name) for name, t in zip(graph.input_names(), graph.inputs)],
        outputs=[_tensor_record(graph.tensor(origin), name)
                 for name, origin in zip(graph.output_names(), graph.outputs)],
        params=int(model.count_params()),
        trainable_params=trainable,
        layers=layers,
    )


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _tensor_record(tensor, name=None):
    return (name or producer_name(tensor), shape_of(tensor), dtype_name(tensor.dtype))


