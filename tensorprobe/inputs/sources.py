"""Command-line arguments -> the input files they name, in order, before anything is read.

An argument is a file, a folder (every .npy, .npz and image file inside, recursively, sorted by
relative path; other files, .txt files among them, and hidden names are passed over), a glob pattern the shell did not expand
(`'images/*.png'`, `**` for any depth), `@LIST` (a text file with one path a line; blank lines
and lines starting with `#` are ignored; relative paths are taken from the current folder, as
`find` writes them) or `-` (one .npy read from standard input). A `.txt` file (one text
sample a line, for a string input) is read when it is named, by itself, on a list or by a
pattern, never found in a folder, where text files are more often notes than samples.

A path that does not exist, a pattern that matches nothing and a folder with nothing to read
are usage errors (exit status 2): the command line is wrong, not a file.
"""

import fnmatch
import glob
import os
import re
from dataclasses import dataclass, field

from tensorprobe import errors
from tensorprobe.errors import InputError, UsageError
from tensorprobe import limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
ARRAY_SUFFIXES = (".npy", ".npz")
TEXT_SUFFIXES = (".txt",)
STDIN = "-"
STDIN_LABEL = "<stdin>"
KINDS = "a .npy, .npz, .txt or image file (PNG, JPEG, BMP, GIF)"

_MAGIC = (
    (b"\x93NUMPY", "npy"),
    (b"PK\x03\x04", "npz"),
    (b"\x89PNG\r\n\x1a\n", "image"),
    (b"\xff\xd8\xff", "image"),
    (b"GIF87a", "image"),
    (b"GIF89a", "image"),
    (b"BM", "image"),
)
_GLOB_CHARS = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Source:
    """One file to read. `path` is what /inputs/source records (the path as it was reached)."""

    path: str
    kind: str  # "npy", "npz", "image", "text", or "memory" (an array given to the Python API)
    array: object = field(default=None, compare=False)


def in_memory(array, label):
    """A Source for an array in memory (the Python API's `x`); `label` names it in
    /inputs/source and in errors."""
    return Source(label, "memory", array)


def gather(arguments, named):
    """([Source] for the positional `arguments`, [(input name, [Source])] for the
    (name, path) pairs of --input NAME=PATH)."""
    positional = expand(arguments)
    by_name = [(name, expand([path], errors.words(f"--input {name}", f"x['{name}']")))
               for name, path in named]
    everything = positional + [s for _, found in by_name for s in found]
    if sum(1 for s in everything if s.path == STDIN) > 1:
        raise UsageError("'-' given twice: standard input can be read only once", argument="x")
    return positional, by_name


def expand(arguments, what="input"):
    """The files that `arguments` name, in order. `what` names the argument in errors
    ("input", "--input image", "x['image']")."""
    found = []
    for argument in arguments:
        found.extend(_expand_one(argument, what))
    return found


def _expand_one(argument, what, from_list=None):
    where = f" (line {from_list[1]} of {from_list[0]})" if from_list else ""
    if argument == STDIN and not from_list:
        return [Source(STDIN, "npy")]
    if argument.startswith("@") and not from_list and not os.path.exists(argument):
        return _expand_list(argument[1:], what)
    if os.path.isdir(argument):
        return _expand_folder(argument, what)
    if os.path.isfile(argument):
        return [Source(argument, _kind_of_file(argument))]
    if os.path.exists(argument):  # a pipe or device: read once, it cannot be checked first
        raise UsageError(f"{what} '{argument}'{where} is not a regular file; pipe a .npy to '-' instead",
                         argument="x")
    if not from_list and _GLOB_CHARS.search(argument):
        return _expand_glob(argument, what)
    raise UsageError(f"{what} '{argument}'{where} does not exist", argument="x")


def _expand_list(list_path, what):
    if not os.path.lexists(list_path):
        raise UsageError(f"{what} '@{list_path}': list file '{list_path}' does not exist", argument="x")
    try:
        with limits.open_regular(list_path, f"{what} '@{list_path}'") as f:
            limit = limits.LIST_BYTES.value()
            data = _read_bounded(f, limit)
        limits.LIST_BYTES.check(len(data), f"{what} '@{list_path}': the list file is too long")
        lines = data.decode("utf-8").splitlines()
    except InputError as e:
        raise UsageError(str(e), argument="x") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} '@{list_path}': cannot read the list ({_reason(e)})", argument="x") from e
    found = []
    for number, line in enumerate(lines, start=1):
        path = line.strip()
        if path and not path.startswith("#"):
            found.extend(_expand_one(path, what, from_list=(list_path, number)))
    if not found:
        raise UsageError(f"{what} '@{list_path}': the list names no file", argument="x")
    return found


def _read_bounded(f, limit, block=1 << 20):
    """The file's bytes, at most `limit` + 1 of them (all with no limit), a block at a time
    so that a signal is handled between blocks."""
    chunks, have = [], 0
    while limit is None or have <= limit:
        chunk = f.read(block if limit is None else min(block, limit + 1 - have))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _expand_folder(folder, what):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            kind = _kind_by_suffix(name)
            if kind is not None and not name.startswith("."):
                found.append(Source(os.path.join(root, name), kind))
    if not found:
        raise UsageError(f"{what} '{folder}': the folder holds no .npy, .npz or image file "
                         "(PNG, JPEG, BMP, GIF)", argument="x")
    return sorted(found, key=lambda s: _parts(os.path.relpath(s.path, folder)))


def _expand_glob(pattern, what):
    matches = sorted(_glob(pattern), key=_parts)
    if not matches:
        raise UsageError(f"{what} '{pattern}': no file matches the pattern", argument="x")
    found = []
    for path in matches:
        if os.path.isdir(path):
            found.extend(_expand_folder(path, what))
        elif _kind_by_suffix(path, text=True) is not None:
            found.append(Source(path, _kind_by_suffix(path, text=True)))
    if not found:
        raise UsageError(f"{what} '{pattern}': the pattern matches no .npy, .npz, .txt or image file",
                         argument="x")
    return found


def _glob(pattern):
    """The paths `pattern` matches, as glob.glob(pattern, recursive=True) finds them, except
    that `**` does not descend into linked folders, as a folder argument does not: glob's
    would, and a link to a folder above it (`a -> ..`) made the listing endless."""
    parts = [p for p in pattern.split(os.sep) if p]
    paths = [os.sep if pattern.startswith(os.sep) else ""]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found = []
        for base in paths:
            if part == "**":
                found.extend(_below(base, files=last))
            elif not glob.has_magic(part):
                path = os.path.join(base, part)
                if os.path.lexists(path) if last else os.path.isdir(path):
                    found.append(path)
            else:
                found.extend(os.path.join(base, name) for name in _listdir(base)
                             if fnmatch.fnmatch(name, part) and (part.startswith(".") or not name.startswith("."))
                             and (last or os.path.isdir(os.path.join(base, name))))
        paths = found
    if pattern.endswith(os.sep):
        paths = [p for p in paths if os.path.isdir(p)]
    return list(dict.fromkeys(p for p in paths if p))


def _listdir(folder):
    try:
        return os.listdir(folder or os.curdir)
    except OSError:
        return []


def _below(base, files):
    """`base` and every folder under it (and with `files`, every file), hidden names and
    linked folders' contents aside."""
    for root, dirs, names in os.walk(base or os.curdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = root if base else os.path.relpath(root)
        rel = "" if rel == os.curdir else rel
        yield rel
        if files:
            yield from (os.path.join(rel, n) for n in sorted(names) if not n.startswith("."))


def _parts(path):
    """Sort key: a path component by component, so a folder's files stay together."""
    return tuple(os.path.normpath(path).split(os.sep))


def _kind_by_suffix(name, text=False):
    """"npy", "npz", "image", "text" (only with `text`: a file named, not found) or None."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix in ARRAY_SUFFIXES:
        return suffix[1:]
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if text and suffix in TEXT_SUFFIXES:
        return "text"
    return None


def _kind_of_file(path):
    """By suffix; a file named explicitly with another suffix is recognised by its first bytes."""
    kind = _kind_by_suffix(path, text=True)
    if kind is not None:
        return kind
    try:
        with limits.open_regular(path) as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({_reason(e)})") from e
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    raise InputError(f"{path}: not {KINDS}")


def _reason(exc):
    return getattr(exc, "strerror", None) or str(exc)
