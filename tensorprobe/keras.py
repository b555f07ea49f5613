"""`tensorprobe.keras.ProbeCallback`: record chosen layers' activation statistics (and
gradients, and values) while `model.fit` trains a Keras 3 model. Importing this module
imports Keras; `import tensorprobe` does not. The work is in backends/keras/callback.py, the
file's layout in trainfile.py and docs/hdf5-layout.md ("The training file")."""

import keras

from tensorprobe.backends.keras.callback import Options, Recorder


class ProbeCallback(keras.callbacks.Callback):
    """Record the layers `layers` / `match` select (names as `dump` takes them) on the probe
    batch `x` (arrays, a dict of arrays, or paths as `dump` takes them) at the start of
    training and each time the optimizer's iteration count reaches a multiple of `every`,
    into the HDF5 file `output` (refused if it exists, unless `overwrite`).

    Each record holds, per layer, min, max, mean, std, zeros_fraction, nan_count, inf_count
    and a 32-bin histogram, computed in inference mode inside one compiled function; with
    `values=True` the activations themselves (`max_bytes` caps what they take: past it they
    stop, with a note in the file, and statistics go on); with `gradients=True` the same of
    the gradient of `loss` (a Keras loss name or callable; default the model's compiled loss)
    on `x` and `y`, reduced over the probe batch as `fit` reduces it, with respect to each
    activation. `on_nonfinite`: "warn" (a RuntimeWarning naming the layer and step), "stop"
    (`model.stop_training`), "raise" (tensorprobe.errors.NonFiniteError); the file records
    the first step and layer with a NaN or Inf either way.

        >>> cb = ProbeCallback(layers=["conv1", "dense"], x=x[:16], every=10, output="probe.h5")
        >>> model.fit(x, y, epochs=3, callbacks=[cb])

    The file is closed between records: `tensorprobe summary probe.h5` reads it while training
    runs, and `tensorprobe plot probe.h5 --layer conv1 --over-steps -o conv1.png` draws it.
    """

    def __init__(self, layers=(), match=None, x=None, every=1, output="probe.h5", values=False, gradients=False,
                 y=None, loss=None, max_bytes=None, on_nonfinite="warn", overwrite=False):
        super().__init__()
        self.options = Options(layers, match, x, every, output, values, gradients, y, loss, max_bytes, on_nonfinite,
                               overwrite)
        self._recorder = None

    def on_train_begin(self, logs=None):
        self._recorder = Recorder(self.options)
        self._recorder.begin(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self._recorder.batch_end()

    def on_train_end(self, logs=None):
        self._recorder.end()

    @property
    def output(self):
        return self.options.output
