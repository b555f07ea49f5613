"""Run an extraction function over batches of inputs and hand the results to the writer.

Computing and writing overlap: a writer thread takes finished batches from a bounded queue
(TensorFlow releases the GIL while it computes the next batch), so a dump takes about the
longer of the two, and at most `depth` batches wait in memory.
"""

import queue
import threading

_DONE = object()


def dump(extract, inputs, writer, batch_size, on_batch=None, labels=None, depth=2):
    """Compute and write every batch. `labels`, for a loss target, is an array (memory-mapped)
    with one row per sample."""
    start = 0
    with _BackgroundWriter(writer, depth, on_batch) as background:
        for sources, batch in inputs.batches(batch_size):
            stop = start + len(sources)
            label_rows = None if labels is None else labels[start:stop].astype("float32")
            background.put(sources, extract([batch], label_rows))
            start = stop


class _BackgroundWriter:
    def __init__(self, writer, depth, on_batch):
        self.writer = writer
        self.on_batch = on_batch
        self.queue = queue.Queue(maxsize=depth)
        self.error = None
        self.thread = threading.Thread(target=self._work, name="tensorprobe-writer", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def put(self, sources, arrays):
        while True:
            self._raise_if_failed()
            try:
                self.queue.put((sources, arrays), timeout=0.1)
                return
            except queue.Full:
                continue

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:  # stop at once; the caller discards the output
            self._drain()
        self._put_done()
        self.thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def _work(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # keep draining so that put() never blocks forever
            try:
                sources, arrays = item
                self.writer.append(sources, arrays)
                if self.on_batch is not None:
                    self.on_batch(len(sources))
            except BaseException as e:  # handed to the main thread, which re-raises it
                self.error = e

    def _raise_if_failed(self):
        if self.error is not None:
            raise self.error

    def _drain(self):
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def _put_done(self):
        while True:
            try:
                self.queue.put(_DONE, timeout=0.1)
                return
            except queue.Full:
                self._drain()
