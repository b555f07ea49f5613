"""Run an extraction function over batches of inputs and hand the results to the writer.

Three stages overlap: a reader thread reads and decodes the next batches (`prefetched`), the
main thread computes the current one, and a writer thread writes the previous one (TensorFlow
releases the GIL while it computes). Each queue between them holds at most two batches, so a
dump takes about the longest of the three, and memory stays bounded whatever the number of
inputs.
"""

import contextlib
import queue
import threading

from tensorprobe.errors import InputError

PREFETCH = 2  # batches read ahead
WRITE_BEHIND = 2  # computed batches waiting to be written
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameters


def limit_malloc_arenas(arenas=1):
    """Keep glibc from hoarding batch-sized buffers. Allocated and freed by the reader,
    compute and writer threads, they otherwise stay in per-thread heaps, and the process's
    memory crept up with the number of batches (VGG16 block2_conv2 at 64x64: 909 MB at N=128,
    1,038 MB at N=1024, 1,105 MB at N=3072; with this: 788, 790 and 791 MB). Call it before
    the threads exist; elsewhere than glibc it does nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
        # a fixed threshold: buffers of 1 MiB and more are always mapped and unmapped, never
        # kept in the heap (glibc otherwise raises the threshold after the first big free)
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def dump(extract, batches, writer, on_batch=None, labels=None, prefetch=PREFETCH):
    """Compute and write every batch (Batch records of tensorprobe.inputs.feed); return the
    (path, reason) of every input skipped as bad. `labels`, for a loss target, is an array
    with one row per sample."""
    skipped = []
    rows = 0
    with contextlib.closing(prefetched(batches, prefetch) if prefetch else batches) as ready, \
            _BackgroundWriter(writer, WRITE_BEHIND, on_batch) as background:
        for batch in ready:
            skipped.extend(batch.skipped)
            arrays = None
            if batch.sources:
                stop = rows + len(batch.sources)
                label_rows = None if labels is None else labels[rows:stop].astype("float32")
                arrays = extract(batch.arrays, label_rows)
                rows = stop
            background.put(batch, arrays)
    if rows == 0 and skipped:  # no rows at all is an empty shard (dump --shard K/N with N > rows)
        raise InputError(f"no input could be read: all {len(skipped)} were skipped as bad")
    return skipped


_DONE = object()


class _BackgroundWriter:
    """The writer thread: takes (batch, computed arrays) from a bounded queue; an error in it
    is raised in the main thread at its next put or when the block ends.

    Leaving the block normally waits until every batch put is written: a batch computed is
    never thrown away while the dump can still succeed (the writer's check of every row in
    DumpWriter.finish relies on it). Leaving it on an error (or Ctrl-C while waiting) discards
    the batches not yet written, since the caller discards the output."""

    def __init__(self, writer, depth, on_batch):
        self.writer = writer
        self.on_batch = on_batch
        self.queue = queue.Queue(maxsize=depth)
        self.error = None
        self.thread = threading.Thread(target=self._work, name="tensorprobe-writer", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def put(self, batch, arrays):
        while True:
            self._raise_if_failed()
            try:
                self.queue.put((batch, arrays), timeout=0.1)
                return
            except queue.Full:
                continue

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._stop()
            return
        try:
            self._finish()
        except BaseException:  # Ctrl-C while the last batches are written
            self._stop()
            raise
        self._raise_if_failed()

    def _finish(self):
        """Queue the end after the batches waiting, and wait for the thread to write them. A
        failed writer keeps taking items (and dropping them), so this never waits forever."""
        while self.thread.is_alive():
            try:
                self.queue.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()

    def _stop(self):
        """End the thread after the batch in hand, discarding those still waiting."""
        self._drain()
        self.queue.put(_DONE)  # room now: this thread is the only one that puts
        self.thread.join()

    def _work(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # keep draining so that put() never blocks forever
            try:
                batch, arrays = item
                if batch.skipped:
                    self.writer.skip(batch.skipped, batch.consumed - len(batch.sources))
                if arrays is not None:
                    self.writer.append(batch.sources, arrays)
                if self.on_batch is not None:
                    self.on_batch(batch.consumed)
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
