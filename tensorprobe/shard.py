"""Sharded dumps: which rows shard K of N takes, and the fingerprints that let `merge` and
`--resume` tell whether shard files belong to the same job. Pure Python; no TensorFlow.

Shard K of N takes the contiguous rows [K*R//N, (K+1)*R//N) of the R ordered input rows, so
N workers with K = 0..N-1 cover every row exactly once and the shards, joined in K order,
keep the global row order.
"""

import dataclasses
import hashlib
import json
import os
import re
import stat

from tensorprobe import errors
from tensorprobe.errors import UsageError

# The root attributes that tie a dump to its job, defined once: the job itself (what a merge
# requires equal in every shard), and a shard's place in it.
JOB = ("total_rows", "input_fingerprint", "options_fingerprint")
SHARD_KEYS = ("shard", "shard_rows")
# What the files of a dump's own rows held (contents_fingerprint): equal for the work --resume
# may skip, but not across the shards of a job (each covers its own rows, maybe on its own copy
# of the inputs).
CONTENTS = "input_contents"
RESUME = SHARD_KEYS + JOB + (CONTENTS,)
CONTENT_HASH_BYTES = 64 << 20  # input files hashed whole, in order, while they add up to this
ROW_SUFFIX = re.compile(r"\[\d+\]$")  # /inputs/source's `file[i]`: row i of a file of several samples

ENV = "TENSORPROBE_SHARD"


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def rows(self, total):
        """(start, stop) of this shard's rows among `total`."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def __str__(self):
        return f"{self.index}/{self.count}"


def parse(text, argument="shard"):
    """'K/N' -> Shard, 0 <= K < N; anything else is a usage error naming `argument` (the API's
    `shard`, --shard in the CLI: errors.name; or what else gave it, TENSORPROBE_SHARD)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UsageError(f"{errors.name(argument)} '{text}': expected K/N, shard K (from 0) of N, such as 0/4",
                         argument=argument)
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"{errors.name(argument)} '{text}': K must be 0 to N-1 and N at least 1", argument=argument)
    return Shard(index, count)


def options_fingerprint(options):
    """SHA-256 of the options that affect a dump's values (a JSON-able dict)."""
    text = json.dumps(options, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def source_file(source):
    """The file of a row source as /inputs/source records it (`file[i]` -> `file`)."""
    return ROW_SUFFIX.sub("", source)


def contents_fingerprint(files, arrays=()):
    """SHA-256 of what the inputs hold. Every input file, in order: its name, size and
    modification time (ns), and, while the files hashed so far add up to at most
    CONTENT_HASH_BYTES, a SHA-256 of its bytes; names that are no regular file (standard
    input, an array's label) count by name. Every array in memory (the Python API's): its
    dtype, shape and bytes. So an input rewritten in place changes it, at the cost of a stat
    per file and at most CONTENT_HASH_BYTES read."""
    import numpy as np

    digest = hashlib.sha256()
    budget = CONTENT_HASH_BYTES
    for name in files:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            info = os.stat(name)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        digest.update(f"{info.st_size} {info.st_mtime_ns}\0".encode())
        if info.st_size <= budget:
            budget -= info.st_size
            digest.update(_file_sha256(name).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str} {array.shape}\0".encode())
        digest.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return digest.hexdigest()


def _file_sha256(path, block=1 << 20):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    except OSError as e:
        return f"unreadable {e.errno}"
    return digest.hexdigest()
