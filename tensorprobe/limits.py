"""Bounds on what reading a file may cost, checked from the sizes it declares before it is
read, and the opening of files: regular files only. The one place for both, for models,
inputs and dumps alike.

A crafted file can declare far more than it holds: a 1 MB PNG that decodes to 20000x20000
pixels, a zip member (of a .keras or an .npz) that inflates a thousandfold, an @LIST that
never ends (/dev/zero). Each limit below is read from its environment variable when it is
checked (so it applies to the command line and the Python API alike); the error names the
variable to raise it:

  TENSORPROBE_MAX_IMAGE_PIXELS   pixels (height x width) of one image, and of --size;
                                 default 178,956,970, the size at which Pillow refuses an
                                 image as a decompression bomb (twice its MAX_IMAGE_PIXELS)
  TENSORPROBE_MAX_ARRAY_BYTES    the data of one array (.npy, .npz member, stdin) as its header
                                 declares it (shape x item size), or of a .txt file; default 16G
  TENSORPROBE_MAX_UNPACKED       what a zip archive (.keras, .npz) and each of its members may
                                 unpack to whatever their compression ratio; default 256M
  TENSORPROBE_MAX_INFLATE_RATIO  beyond that, the most an archive or a member may inflate
                                 (declared size over stored size); default 200 (Deflate
                                 reaches about 1000 only on runs of one byte)
  TENSORPROBE_MAX_LIST_BYTES     an @LIST file; default 64M

Sizes take the suffixes --max-bytes takes (500M, 2G); 0 or "none" turns a limit off.
"""

import math
import os
import stat
from dataclasses import dataclass

from tensorprobe.errors import InputError, UsageError
from tensorprobe.text import parse_size, shape_text

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
UNPACKED_BYTES = Limit("TENSORPROBE_MAX_UNPACKED", 256 << 20, "bytes")
INFLATE_RATIO = Limit("TENSORPROBE_MAX_INFLATE_RATIO", 200, "")
LIST_BYTES = Limit("TENSORPROBE_MAX_LIST_BYTES", 64 << 20, "bytes")
ALL = (IMAGE_PIXELS, ARRAY_BYTES, UNPACKED_BYTES, INFLATE_RATIO, LIST_BYTES)


def check_array(label, shape, dtype):
    """The data an array's header declares, against TENSORPROBE_MAX_ARRAY_BYTES (Python ints:
    a forged shape cannot overflow)."""
    size = math.prod(shape) * dtype.itemsize
    ARRAY_BYTES.check(size, f"{label}: its header declares {shape_text(shape)} {dtype}, {size:,} bytes of data")
    return size


def check_zip(label, archive, archive_size, error=InputError):
    """Refuse a zip archive (`archive`, a zipfile.ZipFile of `archive_size` bytes) whose
    members declare more than they can hold: a member, or all of them together, declaring
    more than TENSORPROBE_MAX_UNPACKED and more than TENSORPROBE_MAX_INFLATE_RATIO times the
    bytes it is stored in (the archive's size for the total; overlapping members count as
    often as they are listed). Reads only the archive's directory; zipfile never returns
    more than a member declares, so the declared sizes bound what is read."""
    grace, ratio = UNPACKED_BYTES.value(), INFLATE_RATIO.value()
    if grace is None or ratio is None:
        return
    members = [m for m in archive.infolist() if not m.is_dir()]
    worst = max(members, key=lambda m: m.file_size / max(m.compress_size, 1), default=None)
    total = sum(m.file_size for m in members)
    for declared, stored, what in (
        (worst.file_size, worst.compress_size, f"its member '{worst.filename}'") if worst else (0, 0, ""),
        (total, archive_size, f"its {len(members)} members together"),
    ):
        if declared > max(grace, ratio * max(stored, 1)):
            raise error(
                f"{label}: {what} would unpack to {declared:,} bytes from {stored:,}, a ratio of "
                f"{declared / max(stored, 1):,.0f}: a decompression bomb or a damaged file. Past "
                f"{UNPACKED_BYTES.amount(grace)} an archive may inflate at most {ratio:,} times; set "
                f"{UNPACKED_BYTES.variable} or {INFLATE_RATIO.variable} to raise that, for a file you trust"
            )


def check_pixels(label, height, width, pixels=None):
    """An image of height x width (with frames of `pixels` in all, for an animation)."""
    size = f"{height}x{width} (height x width)"
    if pixels is None or pixels == height * width:
        IMAGE_PIXELS.check(height * width, f"{label}: the image is {size}, {height * width:,} pixels")
    else:
        IMAGE_PIXELS.check(pixels, f"{label}: the animation is {size}, its frames {pixels:,} pixels in all")


def open_regular(path, what=None, wanted=None, error=InputError):
    """`path` opened for reading in binary, refused (`error`, naming it as `what`, saying it is
    not `wanted`) unless it is a regular file: a FIFO would block the read forever and a
    device such as /dev/zero never ends. Opened without blocking (a FIFO's open would wait
    for a writer), checked on the open file (no race with a swap), then read as usual."""
    name = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{name}: cannot read ({e.strerror or e})") from e
    try:
        _check_mode(os.fstat(fd).st_mode, name, wanted, error)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    # outside the try: fdopen owns the descriptor (and closes it if it fails, even on Ctrl-C
    # in its middle), so closing it again would turn that interrupt into EBADF
    return os.fdopen(fd, "rb")


def check_regular(path, what=None, wanted=None, error=InputError):
    """The same check as open_regular for a reader that opens `path` itself (h5py)."""
    name = what or str(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{name}: cannot read ({e.strerror or e})") from e
    _check_mode(mode, name, wanted, error)


def _check_mode(mode, name, wanted, error):
    if not stat.S_ISREG(mode):
        raise error(f"{name}: not a regular file ({_kind(mode)})" + (f"; {wanted}" if wanted else ""))


def _kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a plain file"
