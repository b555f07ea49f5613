"""The dump's progress bar (samples done, samples per second, time left), with rich: the
CLI shows it on stderr at a terminal; the Python API when asked (`progress=True`), which in
Jupyter renders as a notebook widget."""

import contextlib


@contextlib.contextmanager
def bar(total, console=None):
    """A context manager yielding `advance(n)`; `console` None is rich's default console."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

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
