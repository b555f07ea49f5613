"""A model's layers, at every depth, as plain records: what `tensorprobe layers` shows."""

from dataclasses import dataclass, field

from tensorprobe.backends.keras.graph import is_layer, producer_name
from tensorprobe.text import dtype_name


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


def shape_of(tensor):
    return [None if d is None else int(d) for d in tensor.shape]


def describe(loaded, graph):
    """ModelInfo for a LoadedModel and its unrolled Graph."""
    model = loaded.model
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


