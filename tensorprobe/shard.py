"""Sharded dumps: which rows shard K of N takes, and the fingerprints that let `merge` and
`--resume` tell whether shard files belong to the same job. Pure Python; no TensorFlow.

Shard K of N takes the contiguous rows [K*R//N, (K+1)*R//N) of the R ordered input rows, so
N workers with K = 0..N-1 cover every row exactly once and the shards, joined in K order,
keep the global row order.
"""

import dataclasses
import hashlib
import json
import re

from tensorprobe.errors import UsageError

# The root attributes that tie a dump to its job, defined once: the job itself (what a merge
# requires equal in every shard), and a shard's place in it.
JOB = ("total_rows", "input_fingerprint", "options_fingerprint")
SHARD_KEYS = ("shard", "shard_rows")

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


def parse(text, origin="--shard"):
    """'K/N' -> Shard, 0 <= K < N; anything else is a usage error naming `origin`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UsageError(f"{origin} '{text}': expected K/N, shard K (from 0) of N, such as 0/4")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"{origin} '{text}': K must be 0 to N-1 and N at least 1")
    return Shard(index, count)


def options_fingerprint(options):
    """SHA-256 of the options that affect a dump's values (a JSON-able dict)."""
    text = json.dumps(options, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
