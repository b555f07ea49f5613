"""Run an extraction function over batches of inputs and hand the results to the writer.

Reading and decoding the next batches runs in a background thread while the current one is
computed and written (`prefetched`): the queue between them holds at most PREFETCH batches,
so memory stays bounded whatever the number of inputs.
"""

import contextlib
import queue
import threading

from tensorprobe.errors import InputError

PREFETCH = 2  # batches read ahead


def dump(extract, batches, writer, on_batch=None, prefetch=PREFETCH):
    """Compute and write every batch (Batch records of tensorprobe.inputs.feed); return the
    (path, reason) of every input skipped as bad. Only a few batches are in memory at once."""
    skipped = []
    with contextlib.closing(prefetched(batches, prefetch) if prefetch else batches) as ready:
        for batch in ready:
            if batch.skipped:
                writer.skip(batch.skipped)
                skipped.extend(batch.skipped)
            if batch.sources:
                writer.append(batch.sources, extract(batch.arrays))
            if on_batch is not None:
                on_batch(batch.consumed)
    if writer.rows == 0:
        raise InputError(f"no input could be read: all {len(skipped)} were skipped as bad")
    return skipped


_END = object()


class _Failed:
    def __init__(self, error):
        self.error = error


def prefetched(iterator, depth):
    """Yield the items of `iterator`, produced by a background thread up to `depth` ahead.

    An exception in the producer is raised here, in the consumer. When the consumer stops
    early (an error, Ctrl-C), the producer is told to stop, and its iterator is closed in its
    own thread once the item it is working on is done.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterator:
                if not put(item):
                    break
            else:
                put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Failed(e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="tensorprobe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
