"""Run an extraction function over batches of inputs and hand the results to the writer."""


def dump(extract, inputs, writer, batch_size, on_batch=None, labels=None):
    """Compute and write every batch; only the current batch is held in memory.

    `labels`, for a loss target, is an array (memory-mapped) with one row per sample."""
    start = 0
    for sources, batch in inputs.batches(batch_size):
        stop = start + len(sources)
        label_rows = None if labels is None else labels[start:stop].astype("float32")
        writer.append(sources, extract([batch], label_rows))
        start = stop
        if on_batch is not None:
            on_batch(len(sources))
