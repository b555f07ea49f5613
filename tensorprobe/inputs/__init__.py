"""Inputs as people have them -> batches of model inputs, read lazily, a batch at a time.

  options.py     the dump's input options (--resize, --scale, --input NAME=PATH...), parsed;
                 light enough for the CLI to import at start-up
  sources.py     arguments (files, folders, globs, @lists, `-`) -> the files they name, in order
  spec.py        what each model input takes: name, sample shape, dtype, channel axis
  npy.py         .npy/.npz headers and rows, read by slices (no memory maps, never a pickle)
  images.py      PNG, JPEG, BMP, GIF -> arrays of the model's size and channels (TensorFlow)
  preprocess.py  --scale, --offset and keras.applications' preprocess_input functions
  feed.py        one stream of rows per model input -> aligned, prepared batches
  labels.py      --labels rows for a loss target

Nothing here imports TensorFlow at module level: images.py and preprocess.py import it (or
Keras) when a dump actually needs it.
"""

from tensorprobe.inputs.labels import open_labels

__all__ = ["open_labels"]
