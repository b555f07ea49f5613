"""Run a TFLite file's interpreter on batches and read the chosen tensors back.

A model whose inputs have a dynamic batch axis (-1 in their shape signature) is resized to
each batch's size and run once per batch (the interpreter is reallocated only when the size
changes: the last, smaller batch). One with a fixed batch B (a file converted with batch 1 is
the common case) is run B rows at a time, the last run padded with zero rows that are dropped.
Inputs are real values: an integer input with a quantization is fed `quantize(x)` with its
own scale and zero point. Quantized tensors come back dequantized to float32, or as their
integers when the graph says `raw_quantized`.
"""

import numpy as np

from tensorprobe.errors import InputError
from tensorprobe.backends.tensors import checked, inputs_text
from tensorprobe.text import first_line, shape_text


def extraction_function(graph, indices):
    """run(list of input batches in `graph.inputs` order[, labels]) -> one array per tensor
    index in `indices`, first axis the batch; probe.extraction_function's interface."""
    interpreter = graph.interpreter
    infos = [graph.by_index[i] for i in indices]
    inputs = [graph.by_index[i] for i in graph.input_indices]
    allocated = {"rows": None}  # the batch size the interpreter is allocated for (dynamic batch)

    def resize(rows):
        if allocated["rows"] == rows:
            return
        for t in inputs:
            interpreter.resize_tensor_input(t.index, [rows, *t.shape[1:]], strict=True)
        interpreter.allocate_tensors()
        allocated["rows"] = rows

    def run(batch, labels=None):
        if len(batch) != len(graph.inputs):
            raise InputError(f"the model takes {len(graph.inputs)} inputs ({inputs_text(graph.inputs)}), "
                             f"got {len(batch)}")
        arrays = [checked(spec, np.asarray(x)) for spec, x in zip(graph.inputs, batch)]
        arrays = [a if t.quantization is None else t.quantization.quantize(a) for t, a in zip(inputs, arrays)]
        rows = len(arrays[0]) if arrays else 0
        step = graph.batch or rows
        parts = [[] for _ in infos]
        for start in range(0, rows, step):
            chunk = [a[start:start + step] for a in arrays]
            n = len(chunk[0])
            if graph.batch is None:
                resize(n)
            elif n < step:  # the last rows of a fixed-batch model: zero rows fill the batch
                chunk = [np.concatenate([c, np.zeros((step - n, *c.shape[1:]), c.dtype)]) for c in chunk]
            for t, values in zip(inputs, chunk):
                interpreter.set_tensor(t.index, values)
            try:
                interpreter.invoke()
            except (RuntimeError, ValueError) as e:
                raise InputError(f"the TFLite interpreter could not compute this batch: {first_line(e)}") from e
            for part, info in zip(parts, infos):
                try:
                    value = interpreter.get_tensor(info.index)
                except ValueError as e:  # a scratch tensor its kernel left without data
                    raise InputError(f"tensor #{info.index} ('{info.name}'): the TFLite interpreter holds no value "
                                     f"for it after this batch ({first_line(e)})") from e
                if value.ndim == 0 or value.shape[0] != len(chunk[0]):
                    raise InputError(f"tensor '{info.name}' has shape {shape_text(value.shape, '?')} for a batch of "
                                     f"{len(chunk[0])}: it has no batch axis")
                part.append(value[:n])
        values = [np.concatenate(part) if len(part) != 1 else part[0] for part in parts]
        if graph.raw_quantized:
            return values
        return [v if info.quantization is None else info.quantization.dequantize(v) for v, info in zip(values, infos)]

    return run
