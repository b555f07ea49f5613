"""The command line: parse, call the API (tensorprobe.api, tensorprobe.pipeline), render. No
model logic lives here.

  __init__.py  the `tensorprobe` group: one `error:` line and an exit status for every failure
  options.py   the options commands share, as decorators that bundle them into records
  render.py    the `error:` and `warning:` lines, a dump's summary
  signals.py   Ctrl-C and SIGTERM, an interrupt after the output is written, the allocator
  models.py    layers, tensors: what a model holds
  dumps.py     dump, merge: writing dumps
  reading.py   summary, diff, plot: reading dumps
  compare.py   compare: two models on the same inputs
  interventions.py  run, patch: the model with layers edited; patching sweeps
  numerics.py  nanhunt, validate: non-finite values, dumps replayed against their model

TensorFlow and Keras are imported only inside commands that load a model, so `--help`,
`--version` and usage errors stay fast.
"""

import os
import sys

import click

from tensorprobe import errors
from tensorprobe.version import __version__
from tensorprobe.cli import compare, dumps, interventions, models, numerics, reading, signals
from tensorprobe.cli.render import error

__all__ = ["cli", "main"]


class TensorprobeGroup(click.Group):
    """Turns every failure into one `error:` line and an exit status a script can branch on:
    0 ok, 1 run-time failure, 2 usage error, 130 interrupted, 143 terminated. `--debug` (or
    TENSORPROBE_DEBUG=1) shows the traceback before that line; the status stays the same."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        self.debug = _env_debug()
        self.argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            error("interrupted")
            sys.exit(errors.INTERRUPTED)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `tensorprobe`: the help, as it is
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            self._fail(e.format_message() + hint, e.exit_code)
        except errors.TensorprobeError as e:
            self._fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:  # outside a command (click's own parsing)
            error("interrupted")
            sys.exit(errors.TERMINATED if isinstance(e, errors.Terminated) else errors.INTERRUPTED)
        if isinstance(rv, int) and not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def _fail(self, message, status):
        """The `error:` line (after the traceback with --debug) and the exit status."""
        if self.debug:
            import traceback

            sys.stderr.write(traceback.format_exc())
        error(message)
        sys.exit(status)

    def invoke(self, ctx):
        store = sys.modules.get("tensorprobe.store")
        if store is not None:  # a command run before in this process (tests) leaves nothing behind
            store.new_run()
        # Catch Ctrl-C here, before click turns it into Abort with a stray blank line.
        try:
            with errors.cli_words():  # messages name --layer, not the API's `layers`
                return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise errors.Interrupted(isinstance(e, errors.Terminated)) from e


def _env_debug():
    return os.environ.get("TENSORPROBE_DEBUG", "") not in ("", "0")


@click.group(cls=TensorprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tensorprobe")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's own log lines.")
@click.pass_context
def cli(ctx, debug):
    """Look inside Keras models, SavedModels, frozen graphs, TFLite and ONNX files: list their
    layers and tensors, dump any layer's activations or any graph tensor to HDF5, summarise,
    diff and plot dumps, and compare two models layer by layer.

    \b
      tensorprobe layers model.keras
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.h5 --layer vgg16/block1_conv2 -o acts.h5 *.npy
      tensorprobe tensors saved_model_dir --op Relu
      tensorprobe summary acts.h5
      tensorprobe diff golden.h5 acts.h5 --atol 1e-4
      tensorprobe compare model.keras saved_model_dir input.npy
      tensorprobe run -m model.keras input.npy --zero fc1
      tensorprobe nanhunt -m model.keras batch.npy --backward --labels y.npy --loss mse
      tensorprobe validate acts.h5
    """
    if debug:
        ctx.command.debug = True


for _command in (models.layers, models.tensors, dumps.dump, dumps.merge, reading.summary, reading.diff,
                 reading.plot, compare.compare, interventions.run, interventions.patch, numerics.nanhunt,
                 numerics.validate):
    cli.add_command(_command)


def main():
    try:
        cli(prog_name="tensorprobe")
    except SystemExit as e:
        store = sys.modules.get("tensorprobe.store")
        if store is not None and store.hdf5_damaged():
            # HDF5 would crash while shutting down after a failed write: leave without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        signals.ignore_late_signals()
        raise
