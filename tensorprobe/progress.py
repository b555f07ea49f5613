"""The dump's progress bar (samples done, samples per second, time left), with rich: the
CLI shows it on stderr at a terminal; the Python API when asked (`progress=True`), which in
Jupyter renders as a notebook widget."""

import contextlib


@contextlib.contextmanager
def bar(total, console=None):
    """A context manager yielding `advance(n)`; `console` None: a console on stderr (never
    stdout, which is the caller's), which rich renders as a widget in Jupyter."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    console = console if console is not None else Console(stderr=True)

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} samples/s", style="progress.data.speed")

    progress = Progress("dumping", BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                        console=console, transient=True)
    progress.start()
    try:
        task = progress.add_task("dump", total=total)
        yield lambda n: progress.advance(task, n)
    finally:
        progress.stop()
