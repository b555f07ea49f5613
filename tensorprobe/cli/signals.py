"""What a long command needs from the process: Ctrl-C and SIGTERM that unwind it (and leave
no partial output), an interrupt after the output is in place that counts as success, and
the allocator set up before TensorFlow starts its threads."""

import contextlib
import signal
import sys

from tensorprobe import errors
from tensorprobe.console import err


_late = []  # the signals that came once the output was in place


def terminate(signum, frame):
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C (SIGINT), so the partial output is
    removed; where the store is in use it also remembers the interrupt (store.request_stop).
    Once the output is in place the run has succeeded: the signal is noted and the command
    finishes (an exception raised then could land inside a library's callback, HDF5's while
    the summary is read, which turns it into another error)."""
    stop = KeyboardInterrupt if signum == signal.SIGINT else errors.Terminated
    store = sys.modules.get("tensorprobe.store")
    if store is not None and store.completed_any():
        _late.append(signum)
        return
    if store is not None:
        store.request_stop(stop)
    raise stop


def terminate_on_sigterm():
    """SIGTERM unwinds the command as Ctrl-C does."""
    signal.signal(signal.SIGTERM, terminate)


def stop_on_signals(store):
    """Ctrl-C (SIGINT) and SIGTERM stop the command (see terminate), and the store remembers
    it, so that no output is moved into place after an interrupt Python dropped."""
    store.new_run()
    _late.clear()
    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def success_once_written(store, output):
    """An interrupt that comes once `output` was moved into place ends the command as the
    success it is: `wrote OUTPUT` and exit 0. Before that, it stops it (exit 130 or 143) with
    `output` as it was."""
    try:
        yield
    except KeyboardInterrupt:
        if not store.completed(output):
            raise
        _late.append(signal.SIGINT)
    if _late and store.completed(output):
        err.print(f"wrote {output} (interrupted once it was complete)", markup=False, highlight=False,
                  soft_wrap=True)


def runner_limits():
    """The allocator's limits, before TensorFlow starts its threads."""
    from tensorprobe import runner

    runner.limit_malloc_arenas()


def ignore_late_signals():
    """The outcome is decided: an interrupt while the process shuts down (TensorFlow's
    threads and exit handlers take up to a second, after Python has put the default
    handlers back) must not kill it by the signal after a command that succeeded."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
