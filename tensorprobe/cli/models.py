"""`layers` and `tensors`: what a model holds."""

import click

from tensorprobe.cli import options
from tensorprobe.cli.render import debug
from tensorprobe.console import err, out, quiet_native_stderr


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of layers to stdout.")
@click.option("--filter", "pattern", metavar="REGEX", help="Keep layers whose path matches REGEX (re.search).")
@options.signature_option
@options.model_options
def layers(model, as_json, pattern):
    """List every layer of MODEL, nested models expanded into paths. MODEL is a .keras or
    .h5 file, a SavedModel folder, a frozen graph (.pb, .pbtxt), a .tflite or an .onnx
    file; the layers of a graph are its name scopes.

    \b
      tensorprobe layers model.keras
      tensorprobe layers model.h5 --filter 'block1'
      tensorprobe layers model.keras --json | jq '.[].path'
      tensorprobe layers saved_model_dir --signature serving_default
    """
    from tensorprobe import report, text

    regex = text.regex(pattern, "--filter")
    with quiet_native_stderr(not debug()):
        loaded = model.open()
        info = loaded.describe()
    if not info.layers:
        err.print(f"{model.path}: no layer structure: the graph's name scopes hold no Keras layers "
                  f"(`tensorprobe tensors {model.path}` lists its tensors)", markup=False, highlight=False,
                  soft_wrap=True)
        if as_json:
            out.print("[]", markup=False, highlight=False)
        return
    if regex is not None:
        info.layers = [layer for layer in info.layers if regex.search(layer.path)]
    if as_json:
        out.print(report.layers_json(info), markup=False, highlight=False)
        return
    report.print_table(out, report.layers_table(info, f"{model.path}: {loaded.backend.title(info.name)}"),
                       **report.LAYER_COLUMNS)
    for line in report.model_footer(info):
        out.print(line, markup=False, highlight=False)


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--filter", "pattern", metavar="REGEX", help="Keep tensors whose name matches REGEX (re.search).")
@click.option("--op", "op_types", multiple=True, metavar="TYPE",
              help="Keep tensors made by ops of this type (Relu, BiasAdd, ...; any case). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of tensors to stdout.")
@options.signature_option
@options.model_options
def tensors(model, pattern, op_types, as_json):
    """List the tensors of MODEL's graph in topological order: name, op type, dtype, shape.

    For a SavedModel folder, the signature's graph with functions inlined and variables
    frozen; for a frozen graph (.pb, .pbtxt), the graph itself; for a .keras or .h5 file, the
    model's forward pass traced in inference mode.
    `dump --tensor NAME` stores any of them.

    \b
      tensorprobe tensors saved_model_dir
      tensorprobe tensors model.keras --op BiasAdd --op Relu
      tensorprobe tensors saved_model_dir --filter 'block1_conv2' --json | jq '.[].name'
    """
    from tensorprobe import pipeline, report, text

    regex = text.regex(pattern, "--filter")
    with quiet_native_stderr(not debug()):
        graph, shown = pipeline.tensors(model.open(layers=False).backend, regex, op_types)
    if as_json:
        out.print(report.tensors_json(shown), markup=False, highlight=False)
        return
    report.print_table(out, report.tensors_table(shown, f"{model.path}: {graph.source}"), **report.TENSOR_COLUMNS)
    for line in report.tensors_footer(graph, len(shown)):
        out.print(line, markup=False, highlight=False)
