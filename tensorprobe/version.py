"""The installed version of tensorprobe, for `--version` and the provenance of every dump."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tensorprobe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
