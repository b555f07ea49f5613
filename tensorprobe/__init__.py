"""tensorprobe: list the layers of a Keras/TensorFlow model and dump intermediate activations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tensorprobe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
