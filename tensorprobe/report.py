"""Tables and JSON for people and pipelines: layer listings and dump summaries."""

import json
import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def shape_text(shape):
    dims = ["None" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def print_table(console, table):
    """Print a table at its natural width when the console is not a terminal (a pipe, a file),
    so that long layer paths are never cut or wrapped for grep."""
    if console.is_terminal:
        console.print(table)
    else:
        natural = console.measure(table, options=console.options.update(max_width=1 << 16)).maximum
        title = len(str(table.title or ""))
        if title > natural:  # nor the title, which a table wraps at its own width
            table.min_width = natural = title
        Console(file=console.file, width=max(console.width, natural)).print(table)


def layers_table(info, title):
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("path")
    table.add_column("class", style="cyan")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="center")
    guides = _tree_guides(info.layers)
    for layer, guide in zip(info.layers, guides):
        if layer.output_shape is None:
            shape = "-"
        else:
            shape = ", ".join(shape_text(s) for s in layer.output_shape)
            if layer.calls > 1:
                shape += f" ×{layer.calls} calls"
        table.add_row(
            layer.index,
            Text(guide, style="dim") + Text(layer.path, style="bold" if layer.depth == 0 else ""),
            layer.class_name,
            shape,
            f"{layer.params:,}",
            "-" if layer.trainable is None else "yes" if layer.trainable else "no",
        )
    return table


def _tree_guides(layers):
    """Tree prefixes ("├─ ", "│  └─ ") for layers listed parents first, in `.layers` order."""
    guides = []
    for i, layer in enumerate(layers):
        parts = []
        for level in range(1, layer.depth + 1):
            last = _is_last_at(layers, i, level)
            if level == layer.depth:
                parts.append("└─ " if last else "├─ ")
            else:
                parts.append("   " if last else "│  ")
        guides.append("".join(parts))
    return guides


def _is_last_at(layers, i, level):
    """Whether no later sibling at `level` follows the ancestor (at that level) of layers[i]."""
    for later in layers[i + 1 :]:
        if later.depth < level:
            return True
        if later.depth == level:
            return False
    return True


def model_footer(info):
    def tensors(records):
        return ", ".join(f"{name} {shape_text(shape)} {dtype}" for name, shape, dtype in records)

    if info.trainable_params is None:  # a frozen graph does not say what was trainable
        params = f"params:  {info.params:,} total (frozen variables)"
    else:
        params = (f"params:  {info.params:,} total, {info.trainable_params:,} trainable, "
                  f"{info.params - info.trainable_params:,} non-trainable")
    return [f"inputs:  {tensors(info.inputs)}", f"outputs: {tensors(info.outputs)}", params]


def layers_json(info):
    return json.dumps([layer.to_json() for layer in info.layers], indent=2)


def tensors_table(tensors, title):
    """`tensorprobe tensors`: position in topological order, name, op type, dtype, shape."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("tensor")
    table.add_column("op", style="cyan")
    table.add_column("dtype")
    table.add_column("shape")
    for t in tensors:
        table.add_row(str(t.position), t.name, t.op, t.dtype, "?" if t.shape is None else shape_text(t.shape))
    return table


def tensors_footer(graph, shown):
    """Which tensors the graph is fed at and which it returns, and how many were listed."""
    def spec_text(spec):
        shape = "?" if spec.shape.rank is None else shape_text(spec.shape.as_list())
        return f"{spec.name} {shape} {spec.dtype.name}"

    inputs = ", ".join(f"{spec_text(s)} -> {t}" for s, t in zip(graph.inputs, graph.input_tensors))
    outputs = ", ".join(f"{name} <- {t}" for name, t in graph.outputs)
    return [f"inputs:  {inputs}", f"outputs: {outputs}", f"tensors: {shown} of {len(graph.tensors)} shown"]


def tensors_json(tensors):
    return json.dumps([t.to_json() for t in tensors], indent=2)


def summary_table(summary, output):
    attrs = summary["attrs"]
    table = Table(
        title=f"{output}: {attrs.get('samples', 0)} samples from {attrs.get('model', '?')}",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name in ("dataset", "sample shape", "dtype", "MiB", "min", "max", "mean", "std", "zeros", "NaN", "Inf"):
        table.add_column(name, justify="left" if name in ("dataset", "sample shape", "dtype") else "right")
    for d in summary["datasets"]:
        table.add_row(
            d["path"],
            shape_text(d["sample_shape"]),
            d["dtype"],
            f"{d['mib']:.2f}",
            _number(d.get("min")),
            _number(d.get("max")),
            _number(d.get("mean")),
            _number(d.get("std")),
            f"{100 * d.get('zeros_fraction', math.nan):.1f}%",
            str(d.get("nan_count", "")),
            str(d.get("inf_count", "")),
        )
    return table


def summary_json(summary, output):
    record = {"output": str(output), **summary["attrs"], "datasets": summary["datasets"]}
    return json.dumps(_finite_or_none(record), indent=2)


def _finite_or_none(value):
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _number(value):
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"
