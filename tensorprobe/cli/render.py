"""What the commands print for people, on stderr: the `error:` line, warnings, the summary of
a dump (stdout with --json). Data for scripts goes to stdout (`out`) only."""

import click

from tensorprobe.console import err, out


def error(message):
    """One line, whatever the message holds (library messages often span several)."""
    err.print(f"error: {' '.join(str(message).split())}", markup=False, highlight=False, soft_wrap=True)


def debug():
    """Whether --debug was given (tracebacks, and TensorFlow's own log lines left on stderr)."""
    return getattr(click.get_current_context().find_root().command, "debug", False)


def warn_incomplete(path):
    err.print(f"warning: '{path}' is an incomplete dump, read because of --allow-incomplete",
              markup=False, highlight=False, soft_wrap=True)


def print_summary(summary, path, as_json, console, provenance):
    """A dump's summary: JSON on stdout, or the tables on `console`."""
    from tensorprobe import report

    if as_json:
        out.print(report.summary_json(summary, path), markup=False, highlight=False)
    else:
        report.print_summary(console, summary, path, provenance)
