"""Run an extraction function over batches of inputs and hand the results to the writer."""


def dump(extract, inputs, writer, batch_size, on_batch=None):
    """Compute and write every batch; only the current batch is held in memory."""
    for sources, batch in inputs.batches(batch_size):
        writer.append(sources, extract([batch]))
        if on_batch is not None:
            on_batch(len(sources))
