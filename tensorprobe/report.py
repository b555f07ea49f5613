"""Tables and JSON for people and pipelines: layer listings, dump summaries and diffs."""

import io
import json
import math
import re

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tensorprobe.console import escaped
from tensorprobe.text import printable, shape_text


LAYER_COLUMNS = {"keep": "path", "drop": ("trainable", "params")}
TENSOR_COLUMNS = {"keep": "tensor", "drop": ("dtype", "#", "quantization", "shape")}
SUMMARY_COLUMNS = {"keep": "dataset", "drop": ("std", "mean", "MiB", "zeros", "dtype", "min", "max", "Inf", "NaN")}
DIFF_COLUMNS = {"keep": "dataset", "drop": ("worst at (sample, position)", "A", "B", "max rel err", "dtype",
                                           "outside tol", "shape")}
FOLD_MIN = 4  # the narrowest the kept column (names) is folded to


def print_table(console, table, keep=None, drop=()):
    """Print a table without ever cutting a name in its column `keep` (a layer path, a tensor
    or dataset name) with '…'. The title is a line of its own, never wrapped by rich.

    Off a terminal (a pipe, a file, a CI log) the table takes the width its content needs,
    however wide, so that every line can be read by grep. On a terminal narrower than the
    table, the columns `drop` are left out, in that order, until it fits (a last line says
    which); then the other columns fold their text onto more lines; a name that does not fit
    even so folds too, onto more lines, whole, broken after a '/' where it can be."""
    title, table = table.title, _rebuilt(table, ())
    title = escaped(title)
    if not console.is_terminal:
        # A table does not expand, so on a console this wide it takes its natural width.
        # Cells are plain text: no markup or emoji codes to parse (and none to misread).
        text = io.StringIO()
        wide = Console(file=text, width=1 << 16, markup=False, emoji=False, highlight=False)
        if title is not None:
            wide.print(title, soft_wrap=True)
        wide.print(table)
        console.file.write("".join(line.rstrip() + "\n" for line in text.getvalue().splitlines()))
        return
    if title is not None:
        console.print(Text(str(title), style="table.title") if isinstance(title, str) else title, soft_wrap=True)
    width = console.width
    hidden = []
    for header in drop:
        if _widths(console, table)[0] <= width:
            break
        if header in _headers(table):
            hidden.append(header)
            table = _rebuilt(table, hidden)
    total, columns = _widths(console, table)
    if total > width and table.pad_edge:  # first give up the padding at the table's edges
        table.pad_edge = False
        total, columns = _widths(console, table)
    extra = total - sum(columns.values())
    # the narrowest each other column can be: its longest word, a class name counting as the
    # words of its CamelCase (BatchNormalization: Batch, Normalization), so that a cell folds
    # at a space or between two such words, never inside one
    floor = _word_widths(table)
    squeezed = sum(w if h == keep else floor[h] for h, w in columns.items()) + extra
    fold = squeezed > width  # the kept names fold too, with all the room the others can give
    if total > width:
        breaks = {h: w for h, w in floor.items() if h != keep}
        kept = (keep, max(width - (squeezed - columns[keep]), FOLD_MIN)) if fold else None
        table = _rebuilt(table, hidden, fold=kept, breaks=breaks)
    for column in table.columns:
        column.overflow = "fold"
        if not fold:  # rich narrows the columns that wrap: all but the kept one
            column.no_wrap = column.header == keep
        elif column.header != keep:
            column.max_width = floor[str(column.header)]
    console.print(table, soft_wrap=False)
    if hidden:
        console.print(Text(f"(left out at this width: {', '.join(hidden)}; see --json)", style="dim"),
                      soft_wrap=True)


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")  # between the words of a CamelCase class name


def _word_widths(table):
    """{header: the length of the longest word in the column, header included}, a CamelCase
    word counting as its parts."""
    return {
        str(column.header): max(len(part) for cell in [column.header, *column.cells]
                                for word in [*_plain(cell).split(), ""] for part in _CAMEL.split(word))
        for column in table.columns
    }


def _break_words(cell, width):
    """A cell of one word longer than `width` on lines of at most `width` characters, broken
    between its CamelCase words (as many on a line as fit); other cells as they are (rich
    folds them at their spaces)."""
    text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
    plain = text.plain
    if len(plain) <= width or any(c.isspace() for c in plain):
        return text
    cuts = [m.start() for m in _CAMEL.finditer(plain)] + [len(plain)]
    pieces, start, end = [], 0, 0
    for cut in cuts:
        if cut - start > width and end > start:
            pieces.append(text[start:end])
            start = end
        end = cut
    pieces.append(text[start:])
    return Text("\n").join(pieces)


def _plain(cell):
    return cell.plain if isinstance(cell, Text) else str(cell)


def _headers(table):
    return [str(column.header) for column in table.columns]


def _rebuilt(table, hidden, fold=None, breaks=None):
    """A copy of `table` without a title and without the columns whose header is in `hidden`
    (through rich's public API: a column's position is fixed when it is added). With `fold`,
    (header, width): that column is `width` wide, its names broken after a '/' where they can;
    with `breaks`, {header: width}: those columns' one-word cells broken between CamelCase words."""
    copy_ = Table(box=table.box, show_header=table.show_header, show_edge=table.show_edge,
                  pad_edge=table.pad_edge, padding=table.padding, header_style=table.header_style)
    kept = [column for column in table.columns if str(column.header) not in hidden]
    cells = []
    for column in kept:
        width = fold[1] if fold is not None and column.header == fold[0] else None
        copy_.add_column(column.header, justify=column.justify, style=column.style, width=width,
                         header_style=column.header_style, overflow=column.overflow, no_wrap=column.no_wrap)
        safe = [_cell(cell) for cell in column.cells]
        if breaks and str(column.header) in breaks:
            safe = [_break_words(cell, breaks[str(column.header)]) for cell in safe]
        cells.append([_break_at_slashes(cell, width) for cell in safe] if width else safe)
    for row in zip(*cells):
        copy_.add_row(*row)
    return copy_


def _cell(cell):
    """A cell as rich Text, never parsed as markup, its control characters escaped: names and
    values come from files, which may hold `[bold]` or ESC[31m."""
    return escaped(cell) if isinstance(cell, Text) else Text(printable(cell))


def _break_at_slashes(cell, width):
    """`cell` (text) on lines of at most `width` characters, broken after a '/' where one is in
    reach, else anywhere: a long path reads as path segments, every character kept."""
    text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
    plain, pieces, start = text.plain, [], 0
    while len(plain) - start > width:
        cut = plain.rfind("/", start, start + width)
        end = cut + 1 if cut >= start else start + width
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return Text("\n").join(pieces)


def _widths(console, table):
    """(the table's natural width, {header: natural width of the column's content})."""
    from rich.measure import Measurement

    options = console.options.update_width(1 << 16)
    total = Measurement.get(console, options, table).maximum
    columns = {
        str(column.header): max(Measurement.get(console, options, cell).maximum
                                for cell in [column.header, *column.cells])
        for column in table.columns
    }
    return total, columns


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
            shape = ", ".join("?" if s is None else shape_text(s) for s in layer.output_shape)  # ?: unknown rank
            if layer.calls > 1:
                shape += f" ×{layer.calls} calls"
        path = Text(guide, style="dim") + Text(layer.path, style="bold" if layer.depth == 0 else "")
        if layer.reach == "runtime":
            path += Text(" [runtime]", style="yellow")
        elif layer.reach == "fused":
            path += Text(f" [fused into {layer.fused_into}]" if layer.fused_into else " [fused]", style="yellow")
        table.add_row(
            layer.index or "-",
            path,
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

    runtime = ["[runtime]: no static graph reaches this layer; dump records its output while "
               "its parent runs"] if any(layer.reach == "runtime" for layer in info.layers) else []
    if any(layer.reach == "fused" for layer in info.layers):
        runtime.append("[fused]: the converter merged this layer's op into the named layer's (a Conv2D into "
                       "the ReLU after it, a padding or BatchNormalization into a convolution), so it has no "
                       "tensor of its own to dump")
    if info.trainable_params is None:  # a frozen graph does not say what was trainable
        params = f"params:  {info.params:,} total (frozen variables)"
    else:
        params = (f"params:  {info.params:,} total, {info.trainable_params:,} trainable, "
                  f"{info.params - info.trainable_params:,} non-trainable")
    return runtime + [printable(line) for line in (f"inputs:  {tensors(info.inputs)}",
                                                   f"outputs: {tensors(info.outputs)}", params, *info.notes)]


def layers_json(info):
    return json.dumps([layer.to_json() for layer in info.layers], indent=2)


PROVENANCE_KEYS = (
    "model", "model_sha256", "model_format", "loader", "tensorflow_version", "keras_version",
    "tensorprobe_version", "command", "created", "samples", "complete", "kind", "status",
)
CHANNEL_KEYS = ("channel_min", "channel_max", "channel_mean", "channel_std")


def print_summary(console, summary, path, provenance=True):
    """What `summary` prints, and `dump` at its end (without the provenance)."""
    if summary.get("kind") == "training":
        return print_training_summary(console, summary, path)
    if provenance:
        for line in provenance_lines(summary, path):
            console.print(line, markup=False, highlight=False)
        console.print()
    print_table(console, summary_table(summary, path), **SUMMARY_COLUMNS)
    with_channels = sum(any(k in d for k in CHANNEL_KEYS) for d in summary["datasets"])
    if with_channels:
        console.print(
            f"per-channel statistics ({', '.join(CHANNEL_KEYS)}) of {with_channels} "
            f"dataset{'s' if with_channels > 1 else ''}: see --json",
            markup=False, highlight=False, soft_wrap=True,
        )


def provenance_lines(summary, path):
    """`key  value` lines: the root attributes, the usual ones first, then whatever else the
    file holds, with the input files after the command."""
    attrs = summary["attrs"]
    keys = [k for k in PROVENANCE_KEYS if k in attrs] + sorted(k for k in attrs if k not in PROVENANCE_KEYS)
    rows = []
    for key in keys:
        rows.append((key, _attr_text(key, attrs[key])))
        if key == "command":
            rows.append(("inputs", _inputs_text(summary["inputs"])))
    if "command" not in attrs:
        rows.append(("inputs", _inputs_text(summary["inputs"])))
    if "complete" not in attrs:
        rows.append(("complete", _attr_text("complete", None)))
    rows = [(printable(key), escaped(value)) for key, value in rows]
    width = max(len(key) for key, _ in rows)
    return [Text(printable(path), style="bold")] + [Text(f"  {key:<{width}}  ") + value for key, value in rows]


def _attr_text(key, value):
    if key == "complete":
        if value is True:
            return Text("yes")
        return Text("NO: an incomplete dump (interrupted or still running); rows and statistics "
                    "may be missing", style="bold red")
    if key == "command" and isinstance(value, list):
        import shlex

        return Text(shlex.join(str(v) for v in value))
    return Text(str(value))


def _inputs_text(inputs, shown=3):
    parts = [f"{i['file']} ({i['rows']} row{'s' if i['rows'] != 1 else ''})" for i in inputs[:shown]]
    if len(inputs) > shown:
        parts.append(f"and {len(inputs) - shown} more files (see --json)")
    return ", ".join(parts) or "-"


def tensors_table(tensors, title):
    """`tensorprobe tensors`: number (the position in topological order; a TFLite tensor's
    index), name, op type, dtype, shape, and the columns a format adds (`extra_cells`)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("tensor")
    table.add_column("op", style="cyan")
    table.add_column("dtype")
    table.add_column("shape")
    extra = list(tensors[0].extra_cells()) if tensors else []
    for name in extra:
        table.add_column(name)
    for t in tensors:
        cells = t.extra_cells()
        table.add_row(str(t.number), t.name, t.op, t.dtype, "?" if t.shape is None else shape_text(t.shape),
                      *(cells[name] for name in extra))
    return table


def tensors_footer(graph, shown):
    """Which tensors the graph is fed at and which it returns, and how many were listed."""
    def spec_text(spec):
        shape = "?" if spec.shape.rank is None else shape_text(spec.shape.as_list())
        return f"{spec.name} {shape} {spec.dtype.name}"

    inputs = ", ".join(f"{spec_text(s)} -> {t}" for s, t in zip(graph.inputs, graph.input_tensors))
    outputs = ", ".join(f"{name} <- {t}" for name, t in graph.outputs)
    return [printable(f"inputs:  {inputs}"), printable(f"outputs: {outputs}"),
            f"tensors: {shown} of {len(graph.tensors)} shown"]


def tensors_json(tensors):
    return json.dumps([t.to_json() for t in tensors], indent=2)


def summary_table(summary, output):
    attrs = summary["attrs"]
    samples = attrs.get("samples", sum(i["rows"] for i in summary.get("inputs", ())))
    title = f"{output}: {samples} sample{'' if samples == 1 else 's'} from {attrs.get('model', '?')}"
    if attrs.get("complete") is not True:
        title += " (INCOMPLETE)"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("dataset", "sample shape", "dtype", "MiB", "min", "max", "mean", "std", "zeros", "NaN", "Inf"):
        table.add_column(name, justify="left" if name in ("dataset", "sample shape", "dtype") else "right")
    for d in summary["datasets"]:
        table.add_row(
            d["name"],
            shape_text(d["sample_shape"]),
            d["dtype"],
            f"{d['mib']:.2f}",
            _number(d.get("min")),
            _number(d.get("max")),
            _number(d.get("mean")),
            _number(d.get("std")),
            _percent(d.get("zeros_fraction"), digits=None),
            str(d.get("nan_count", "")),
            str(d.get("inf_count", "")),
        )
    return table


def summary_record(summary, output):
    """What `summary --json` prints, as a dict (non-finite numbers as None)."""
    if summary.get("kind") == "training":
        record = {"output": str(output), **summary["attrs"],
                  **{k: summary[k] for k in ("steps", "first_step", "last_step", "statistics", "datasets")}}
        return _finite_or_none(record)
    record = {"output": str(output), **summary["attrs"], "inputs": summary["inputs"],
              "datasets": summary["datasets"]}
    return _finite_or_none(record)


def summary_json(summary, output):
    return json.dumps(summary_record(summary, output), indent=2)


def print_training_summary(console, summary, path):
    """`summary` of a training file (ProbeCallback's): where it comes from, the steps
    recorded, and each layer's statistics at the last step (its gradient's below it)."""
    attrs = summary["attrs"]
    shown = {**summary, "inputs": [{"file": attrs.get("probe_source", "?"), "rows": attrs.get("probe_rows", 0)}]}
    for line in provenance_lines(shown, path):
        console.print(line, markup=False, highlight=False)
    console.print()
    print_table(console, training_table(summary, path), **TRAINING_COLUMNS)


TRAINING_COLUMNS = {"keep": "layer", "drop": ("std", "mean", "zeros", "dtype", "min", "max", "Inf", "NaN")}


def training_table(summary, output):
    n = summary["steps"]
    steps = f"{n} step{'' if n == 1 else 's'}" + (f" ({summary['first_step']} to {summary['last_step']})" if n else "")
    title = f"{output}: {steps} recorded from {summary['attrs'].get('model', '?')}, statistics at the last step"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("layer", "sample shape", "dtype", "min", "max", "mean", "std", "zeros", "NaN", "Inf"):
        table.add_column(name, justify="left" if name in ("layer", "sample shape", "dtype") else "right")
    for layer in summary["statistics"]:
        for key, name in (("last", layer["name"]), ("gradient_last", f"gradients/{layer['name']}")):
            if key not in layer:
                continue
            d = layer[key] or {}
            table.add_row(name, shape_text(layer["sample_shape"]), layer["dtype"], _number(d.get("min")),
                          _number(d.get("max")), _number(d.get("mean")), _number(d.get("std")),
                          _percent(d.get("zeros_fraction"), digits=None), str(d.get("nan_count", "")),
                          str(d.get("inf_count", "")))
    return table


STATUS = {"match": "ok", "values": "DIFFERS", "shape": "SHAPE", "dtype": "DTYPE"}


def print_diff(console, result):
    print_table(console, diff_table(result), **DIFF_COLUMNS)
    for line in diff_footer(result):
        console.print(line, markup=False, highlight=False)


def diff_table(result):
    a, b = result["a"], result["b"]
    title = f"A = {a}, B = {b}: rtol {result['rtol']:g}, atol {result['atol']:g}"
    if "error_stat" in result:  # --error-stat or per-dataset --rtol/--atol given
        rules = [f"--rtol {r}" for r in result["rtol_rules"]] + [f"--atol {r}" for r in result["atol_rules"]]
        title = ", ".join([title, f"{result['error_stat']} error", *rules])
    table = Table(title=title,
                  box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("dataset", "shape", "dtype", "max abs err", "max rel err", "outside tol",
                 "worst at (sample, position)", "A", "B", "status"):
        table.add_column(name, justify="right" if name in ("max abs err", "max rel err", "outside tol", "A", "B") else "left")
    for d in result["datasets"]:
        if d["status"] in ("only_a", "only_b"):
            side = "A" if d["status"] == "only_a" else "B"
            table.add_row(d["name"], shape_text(d[f"shape_{side.lower()}"]), d[f"dtype_{side.lower()}"],
                          "", "", "", "", "", "", Text(f"only in {side}", style="bold red"))
            continue
        worst = d.get("worst")
        table.add_row(
            d["name"],
            _pair(shape_text(d["shape_a"]), shape_text(d["shape_b"])),
            _pair(d["dtype_a"], d["dtype_b"]),
            _number(d.get("max_abs_error")),
            _number(d.get("max_rel_error")),
            _percent(d.get("outside_fraction")),
            _location(worst) if worst else "",
            _number(worst["a"]) if worst else "",
            _number(worst["b"]) if worst else "",
            Text(STATUS[d["status"]], style="green" if d["status"] == "match" else "bold red"),
        )
    return table


def diff_footer(result):
    lines = []
    first = result["first_difference"]
    if first is not None:
        d = next(d for d in result["datasets"] if d["name"] == first)
        if d["status"] == "shape":
            why = f"shape {shape_text(d['shape_a'])} in A, {shape_text(d['shape_b'])} in B"
        elif d["status"] == "dtype":
            why = f"dtype {d['dtype_a']} in A, {d['dtype_b']} in B"
        else:
            unequal = "unequal" if d["dtype_a"] == "string" else "outside tolerance"  # strings: no tolerance
            why = f"{_percent(d['outside_fraction'])} of values {unequal}"
        if d.get("worst"):
            w = d["worst"]
            why += f"; worst at {_location(w)}: {_number(w['a'])} in A, {_number(w['b'])} in B"
        lines.append(f"first difference: {first} ({why})")
    for side in ("a", "b"):
        if result[f"only_in_{side}"]:
            lines.append(f"only in {side.upper()}: {', '.join(result[f'only_in_{side}'])}")
    inputs = result["inputs"]
    if inputs["first_difference"] is not None:
        f = inputs["first_difference"]
        lines.append(f"note: the inputs differ: row {f['row']} is {f['a']!r} in A, {f['b']!r} in B "
                     "(/inputs/source; the values were compared anyway)")
    elif inputs["rows_a"] != inputs["rows_b"]:
        lines.append(f"note: A has {inputs['rows_a']} input rows, B has {inputs['rows_b']}")
    for side in ("a", "b"):
        if not result["complete"][side]:
            lines.append(f"note: {side.upper()} is an incomplete dump (read with --allow-incomplete)")
    compared = result["compared"]
    if result["match"]:
        lines.append(f"match: {compared} of {compared} datasets")
    else:
        counts = [f"{result['differing']} of {compared} datasets differ"]
        counts += [f"{len(result[f'only_in_{s}'])} only in {s.upper()}" for s in ("a", "b") if result[f"only_in_{s}"]]
        lines.append(f"differ: {', '.join(counts)}")
    return lines


def diff_json(result):
    return json.dumps(_finite_or_none(result), indent=2)


def _pair(a, b):
    return a if a == b else f"{a} ≠ {b}"


def _location(worst):
    sample = "" if worst["sample"] is None else str(worst["sample"])
    return f"{sample}, {shape_text(worst['position'])}" if worst["position"] else sample


def _percent(fraction, digits=3):
    if fraction is None or (isinstance(fraction, float) and not math.isfinite(fraction)):
        return ""
    return f"{100 * fraction:.1f}%" if digits is None else f"{100 * fraction:.{digits}g}%"


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
    if isinstance(value, str):  # a string dataset's value (diff's worst element)
        return repr(printable(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


COMPARE_COLUMNS = {"keep": "layer", "drop": ("worst at (sample, position)", "mean abs err", "max rel err", "shape")}


def compare_table(result):
    """`tensorprobe compare`: one row per pair, in model A's order."""
    table = Table(title=f"A = {result['a']}, B = {result['b']}: {result['samples']} samples, "
                        f"{_criterion_text(result)}", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("layer", "shape", "max abs err", "max rel err", "mean abs err", "cosine", "SNR dB",
                 "worst at (sample, position)", "status"):
        table.add_column(name, justify="left" if name in ("layer", "shape", "worst at (sample, position)",
                                                           "status") else "right")
    first = result["first_divergence"]
    for p in result["pairs"]:
        if p["status"] == "shape":
            table.add_row(p["path"], _pair(shape_text(p["shape_a"]), shape_text(p["shape_b"])), "", "", "", "",
                          "", "", Text("SHAPE", style="bold red"))
            continue
        status = "ok" if p["status"] == "ok" else "DIFFERS" + (" <- first" if p["path"] == first else "")
        worst = {"sample": p["worst_sample"], "position": p["worst_position"]} if p["worst_sample"] is not None else None
        table.add_row(
            p["path"] + (" (layout)" if "layout" in p else ""), shape_text(p["shape"]), _number(p["max_abs"]),
            _number(p["max_rel"]), _number(p["mean_abs"]), _cosine(p["cosine"]), _number(p["snr_db"]),
            _location(worst) if worst and p["status"] != "ok" else "",
            Text(status, style="green" if p["status"] == "ok" else "bold red"),
        )
    return table


def _criterion_text(result):
    return result["criterion"]


def _cosine(value):
    return "" if value is None else f"{value:.6f}"


def compare_footer(result, width=100):
    """The lines under the table; the lists of layers folded to `width` columns, each line
    naming one or more whole layers."""
    lines = [f"(layout): {p['path']}: {p['layout']}" for p in result["pairs"] if "layout" in p]
    if result.get("inputs_by_position"):
        lines.append(result["inputs_by_position"])
    for side, other in (("b", "a"), ("a", "b")):
        fused = result[f"fused_in_{side}"]
        if fused:
            into = {}
            for path, owner in fused.items():
                into.setdefault(owner, []).append(path)
            lines.append(f"fused in {side.upper()} ({_count(len(fused))}: the converter merged their ops into "
                         f"another layer's, so they have no value of their own to compare):")
            lines.extend(f"  {', '.join(paths)}" + (f" -> {owner}" if owner else "") for owner, paths in into.items())
    for side in ("a", "b"):
        only = result[f"only_in_{side}"]
        if only:
            lines.append(f"only in {side.upper()} ({_count(len(only))}):")
            lines.extend(_folded(only, width))
    first = result["first_divergence"]
    pairs = result["pairs"]
    if first is None:
        lines.append(f"match: all {len(pairs)} pairs within tolerance")
    else:
        before = next(i for i, p in enumerate(pairs) if p["path"] == first)
        differ = sum(p["status"] != "ok" for p in pairs)
        lines.append(f"first divergence: {first} ({before} pairs before it within tolerance; "
                     f"{differ} of {len(pairs)} pairs differ)")
    return lines


def _count(n):
    return f"{n} layer" if n == 1 else f"{n} layers"


def _folded(names, width, indent="  "):
    """`names` joined with ', ' on lines of at most `width` columns (a longer name alone)."""
    lines, line = [], ""
    for k, name in enumerate(names):
        piece = name + ("," if k < len(names) - 1 else "")
        if line and len(indent) + len(line) + 1 + len(piece) > width:
            lines.append(indent + line)
            line = piece
        else:
            line = f"{line} {piece}" if line else piece
    if line:
        lines.append(indent + line)
    return lines


def print_compare(console, result):
    print_table(console, compare_table(result), **COMPARE_COLUMNS)
    for line in compare_footer(result, console.width if console.is_terminal else 100):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def compare_json(result):
    return json.dumps(_finite_or_none(result), indent=2)
