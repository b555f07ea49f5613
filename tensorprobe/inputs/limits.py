"""Bounds on what reading inputs may cost, checked from the sizes a file declares before it
is read (the one place for them), and the opening of input files: regular files only.

A crafted file can declare far more than it holds: a 1 MB PNG that decodes to 20000x20000
pixels, an .npz member that inflates a thousandfold, an @LIST that never ends (/dev/zero).
Each limit below is read from its environment variable when it is checked (so it applies to
the command line and the Python API alike); the error names the variable to raise it:

  TENSORPROBE_MAX_IMAGE_PIXELS   pixels (height x width) of one image, and of --size;
                                 default 178,956,970, the size at which Pillow refuses an
                                 image as a decompression bomb (twice its MAX_IMAGE_PIXELS)
  TENSORPROBE_MAX_ARRAY_BYTES    the data of one array (.npy, .npz member, stdin) as its header
                                 declares it (shape x item size), or of a .txt file; default 16G
  TENSORPROBE_MAX_INFLATE_RATIO  an .npz member's declared size over its compressed size, for
                                 a member over 64 MiB; default 200 (Deflate reaches about
                                 1000 only on runs of one byte)
  TENSORPROBE_MAX_LIST_BYTES     an @LIST file; default 64M

Sizes take the suffixes --max-bytes takes (500M, 2G); 0 or "none" turns a limit off.
"""

import math
import os
import stat
from dataclasses import dataclass

from tensorprobe.errors import InputError, UsageError
from tensorprobe.text import shape_text

INFLATE_GRACE = 64 << 20  # an .npz member this small inflates as it likes


@dataclass(frozen=True)
class Limit:
    variable: str
    default: int
    what: str  # "pixels", "bytes", "" (a ratio)

    def value(self):
        """The limit in force (None: no limit), from the environment or the default."""
        text = os.environ.get(self.variable, "").strip()
        if not text:
            return self.default
        if text.lower() in ("0", "none"):
            return None
        if self.what == "bytes":
            from tensorprobe.api import parse_size

            return parse_size(text, self.variable)
        try:
            value = int(text.replace(",", "").replace("_", ""))
        except ValueError:
            value = -1
        if value < 0:
            raise UsageError(f"{self.variable} '{text}': expected a whole number")
        return value

    def check(self, amount, subject, error=InputError):
        """Refuse `amount` (declared by `subject`, a phrase naming the file or option) above
        the limit: an InputError for a file, else `error`."""
        limit = self.value()
        if limit is not None and amount > limit:
            trust = ", for a file you trust" if error is InputError else ""
            raise error(f"{subject}, more than the limit of {self.amount(limit)}; set "
                        f"{self.variable} to raise it (0 for none){trust}")

    def amount(self, n):
        if self.what == "bytes":
            return f"{n:,} bytes ({n / (1 << 30):,.1f} GiB)" if n >= 1 << 30 else f"{n:,} bytes"
        return f"{n:,} {self.what}".rstrip()


IMAGE_PIXELS = Limit("TENSORPROBE_MAX_IMAGE_PIXELS", 2 * (1024 * 1024 * 1024 // 4 // 3), "pixels")
ARRAY_BYTES = Limit("TENSORPROBE_MAX_ARRAY_BYTES", 16 << 30, "bytes")
INFLATE_RATIO = Limit("TENSORPROBE_MAX_INFLATE_RATIO", 200, "")
LIST_BYTES = Limit("TENSORPROBE_MAX_LIST_BYTES", 64 << 20, "bytes")
ALL = (IMAGE_PIXELS, ARRAY_BYTES, INFLATE_RATIO, LIST_BYTES)


def check_array(label, shape, dtype):
    """The data an array's header declares, against TENSORPROBE_MAX_ARRAY_BYTES (Python ints:
    a forged shape cannot overflow)."""
    size = math.prod(shape) * dtype.itemsize
    ARRAY_BYTES.check(size, f"{label}: its header declares {shape_text(shape)} {dtype}, {size:,} bytes of data")
    return size


def check_member(label, declared, compressed):
    """An .npz member's declared (uncompressed) size against its compressed size."""
    limit = INFLATE_RATIO.value()
    if limit is None or declared <= INFLATE_GRACE:
        return
    ratio = declared / max(compressed, 1)
    if ratio > limit:
        raise InputError(f"{label}: {compressed:,} compressed bytes declare {declared:,} bytes, a ratio of "
                         f"{ratio:,.0f}, more than the limit of {limit:,}; set {INFLATE_RATIO.variable} to "
                         "raise it (0 for none), for a file you trust")


def check_pixels(label, height, width, pixels=None):
    """An image of height x width (with frames of `pixels` in all, for an animation)."""
    size = f"{height}x{width} (height x width)"
    if pixels is None or pixels == height * width:
        IMAGE_PIXELS.check(height * width, f"{label}: the image is {size}, {height * width:,} pixels")
    else:
        IMAGE_PIXELS.check(pixels, f"{label}: the animation is {size}, its frames {pixels:,} pixels in all")


def open_regular(path, what=None):
    """`path` opened for reading in binary, refused unless it is a regular file: a FIFO or a
    device would block or never end. Opened without blocking (a FIFO's open would wait for
    a writer), checked on the open file (no race with a swap), then read as usual."""
    name = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{name}: not a regular file ({_kind(mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a plain file"
