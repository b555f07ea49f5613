"""`merge`: join the shard files of one sharded dump (`dump --shard K/N`) into one dump.

The merged file holds, for every dataset path, an HDF5 virtual dataset that maps the shards'
rows in shard order (or, with `copy`, a real dataset with the rows copied), /inputs/source
and /inputs/skipped copied (they are small), the shards' root attributes without those about
one shard's file (SHARD_OWN) plus `merged_from`, and statistics combined exactly from the
shards' statistics attributes (stats.RunningStats.from_attrs + merge); the data is not read
for them.

Each shard must hold exactly its rows: those of `shard_rows` but the ones it skipped as bad
(/inputs/skipped's attribute `rows`), in every dataset (open_dump checks that they agree).

Virtual datasets name their shard files relative to the merged file's folder, so the folder
can move as a whole; the shards must stay beside the merged file (unless `copy`). The merged
file records each shard's rows, content digest (the `data_sha256` its writer stored) and the
size and modification time of its file, and readers refuse a shard that no longer matches
(store.check_shards). With `copy`, each shard's digest is computed again from the rows copied
and must match; a virtual merge takes it from the shard (a shard without one, from an older
tensorprobe, is read once to compute it).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tensorprobe import errors
from tensorprobe import shard as sharding
from tensorprobe import store
from tensorprobe.errors import MergeError, UsageError, WriteError
from tensorprobe.stats import RunningStats

JOB_WORDS = {"total_rows": "number of input rows", "input_fingerprint": "input list",
             "options_fingerprint": "model or options"}
STAT_ATTRS = set(store.STAT_KEYS) | {"channel_min", "channel_max", "channel_mean", "channel_std",
                                     "channel_count", "first_nonfinite_sample"}
COPY_BLOCK = 64 << 20  # bytes per block copied with `copy`
# root attributes about one shard's file, not copied from shard 0 to the merged file
SHARD_OWN = ("shard", "shard_rows", "complete", "samples", store.DIGEST, sharding.CONTENTS)


@dataclass
class ShardFile:
    path: Path
    attrs: dict  # root attributes, as h5py returns them
    shard: sharding.Shard
    rows: int
    datasets: dict = field(default_factory=dict)  # "group/name" -> (shape, dtype, attrs, chunks, compression)
    sources: np.ndarray = None
    skipped: np.ndarray = None
    skipped_rows: int = 0  # sample rows passed over as bad (--skip-bad)
    digest: str = None  # its content digest, store.DIGEST


def merge(paths, output, copy=False, overwrite=False):
    """Check the shards and write the merged dump to `output`. Returns (rows, shard count)."""
    output = Path(output)
    for p in paths:
        if Path(p).resolve() == output.resolve():
            raise UsageError(f"{errors.name('output')} '{output}' is one of the shards", argument="output")
    shards = _in_order([_read(Path(p)) for p in paths])
    with store.atomic_output(output, overwrite) as tmp:
        f = h5py.File(tmp, "w")
        try:
            _write(f, shards, output, copy)
            f.close()
        except BaseException as e:
            store.discard(f, tmp)
            if isinstance(e, (OSError, RuntimeError)):  # h5py reports failed writes as either
                raise WriteError(f"{errors.name('output')} '{output}': write failed: {store._write_reason(e)}",
                                 argument="output") from e
            raise
    return sum(s.rows for s in shards), len(shards)


def _read(path):
    with store.open_dump(path) as f, store.reading(path):
        attrs = dict(f.attrs)
        if "shard" not in attrs:
            raise MergeError(f"'{path}' is not a shard (no 'shard' attribute: it was not written by dump --shard)")
        text = store._plain(attrs["shard"])
        try:
            shard = sharding.parse(text if isinstance(text, str) else None, f"'{path}': shard")
        except UsageError as e:  # the file is at fault, not the command line
            raise MergeError(f"'{path}': its 'shard' attribute is {text!r}, not K/N") from e
        result = ShardFile(path, attrs, shard, 0)
        result.sources = store.checked(f["inputs/source"])[()]
        result.rows = len(result.sources)
        if "inputs/skipped" in f:
            result.skipped = store.checked(f["inputs/skipped"])[()]
        result.skipped_rows = store.skipped_rows(f)
        result.digest = store._plain(attrs.get(store.DIGEST)) or store.content_digest(f)
        for group in store.data_groups(f):
            def visit(name, obj, group=group):
                if isinstance(obj, h5py.Dataset):
                    store.check_statistics(obj)  # merge combines them: refuse doctored ones
                    result.datasets[f"{group}/{name}"] = (obj.shape, obj.dtype, dict(obj.attrs), obj.chunks,
                                                          obj.compression, obj.compression_opts)

            f[group].visititems(visit)
    return result  # open_dump checked that every dataset has /inputs/source's rows


def rows_total(shard_file):
    return int(store._plain(shard_file.attrs["total_rows"]))  # open_dump checked it (job_rows_disagree)


def _in_order(shards):
    """The shards sorted by K, after checking they are all N shards of one job."""
    first = shards[0]
    by_index = {}
    for s in shards:
        for key in sharding.JOB:
            if store._plain(s.attrs.get(key)) != store._plain(first.attrs.get(key)):
                raise MergeError(f"'{s.path}' is not a shard of the same dump as '{first.path}': "
                                 f"its {JOB_WORDS[key]} differ ({key})")
        if s.shard.count != first.shard.count:
            raise MergeError(f"'{s.path}' is shard {s.shard}, '{first.path}' shard {first.shard}: "
                             "different numbers of shards")
        if s.shard.index in by_index:
            raise MergeError(f"'{s.path}' is shard {s.shard}, like '{by_index[s.shard.index].path}'")
        rows = list(s.shard.rows(rows_total(s)))
        if store._plain(s.attrs.get("shard_rows")) != rows:
            raise MergeError(f"'{s.path}': shard {s.shard} records rows {store._plain(s.attrs.get('shard_rows'))}, "
                             f"expected {rows}")
        if s.rows + s.skipped_rows != rows[1] - rows[0]:
            skipped = f" and {s.skipped_rows} skipped as bad" if s.skipped_rows else ""
            raise MergeError(f"'{s.path}': shard {s.shard} holds {s.rows} rows{skipped}, expected "
                             f"{rows[1] - rows[0]} (rows [{rows[0]}, {rows[1]}) of {rows_total(s)})")
        by_index[s.shard.index] = s
    missing = [k for k in range(first.shard.count) if k not in by_index]
    if missing:
        names = ", ".join(f"{k}/{first.shard.count}" for k in missing)
        raise MergeError(f"shard{'s' if len(missing) > 1 else ''} {names} missing "
                         f"(given {len(shards)} of {first.shard.count})")
    ordered = [by_index[k] for k in range(first.shard.count)]
    filled = [s for s in ordered if s.rows]
    for s in filled[1:]:
        _same_datasets(filled[0], s)
    return ordered


def _same_datasets(a, b):
    if set(a.datasets) != set(b.datasets):
        odd = sorted(set(a.datasets) ^ set(b.datasets))[0]
        raise MergeError(f"'{b.path}' and '{a.path}' hold different datasets ({odd})")
    for name, (shape, dtype, *_) in a.datasets.items():
        other = b.datasets[name]
        if other[0][1:] != shape[1:] or other[1] != dtype:
            raise MergeError(f"'{b.path}': {name} is {other[0][1:]} {other[1]}, in '{a.path}' {shape[1:]} {dtype}")


def _write(f, shards, output, copy):
    first = shards[0]
    for key, value in first.attrs.items():
        if key not in SHARD_OWN:
            f.attrs[key] = value
    folder = output.parent.resolve()
    names = [os.path.relpath(s.path.resolve(), folder) for s in shards]
    f.attrs["merged_from"] = names
    f.attrs["merge_mode"] = "copy" if copy else "virtual"
    for key, value in store.shard_records(shards).items():
        f.attrs[key] = value
    f.attrs["complete"] = False
    rows = sum(s.rows for s in shards)
    strings = h5py.string_dtype("utf-8")
    # Each dataset is flushed while it is held: a failed write (a full disk) then raises,
    # instead of happening when h5py releases the dataset, which can only print the error.
    f.create_dataset("inputs/source", data=np.concatenate([s.sources for s in shards]), dtype=strings,
                     maxshape=(None,), chunks=(1024,) if rows else None).flush()
    skipped = [s.skipped for s in shards if s.skipped is not None]
    if skipped:
        ds = f.create_dataset("inputs/skipped", data=np.concatenate(skipped), dtype=strings)
        ds.attrs["rows"] = sum(s.skipped_rows for s in shards)
        ds.flush()
    f.require_group("activations")
    filled = [(s, name) for s, name in zip(shards, names) if s.rows]
    digests = {s.path: _source_digest(s) for s in shards} if copy else {}
    for path, (shape, dtype, attrs, chunks, compression, opts) in (filled[0][0].datasets.items() if filled else ()):
        full = (rows,) + shape[1:]
        if copy:
            ds = f.create_dataset(path, shape=full, dtype=dtype, chunks=chunks, compression=compression,
                                  compression_opts=opts, fletcher32=store.CHECKSUM and not store.is_string(dtype))
            _copy_rows(ds, [s for s, _ in filled], path, digests)
        else:
            layout = h5py.VirtualLayout(shape=full, dtype=dtype)
            start = 0
            for s, name in filled:
                layout[start : start + s.rows] = h5py.VirtualSource(name, path, shape=(s.rows,) + shape[1:])
                start += s.rows
            ds = f.create_virtual_dataset(path, layout)
        for key, value in attrs.items():
            if key not in STAT_ATTRS:
                ds.attrs[key] = value
        if not store.is_string(dtype):  # strings have no statistics
            stats = RunningStats()
            for s, _ in filled:
                try:
                    part = RunningStats.from_attrs(s.datasets[path][2], s.rows, shape[1:])
                except (KeyError, ValueError) as e:  # a statistic missing or of the wrong size
                    raise MergeError(f"'{s.path}': the statistics of {path} cannot be merged ({e})") from e
                stats.merge(part)
            store.write_stats(ds, stats)
        ds.flush()
    for s in shards:
        if copy and digests[s.path].hexdigest(_datasets(s)) != s.digest:
            raise MergeError(f"'{s.path}': its rows no longer give its content digest ({store.DIGEST}): the file "
                             "changed after it was written")
    f.attrs["samples"] = rows
    f.attrs["complete"] = True
    f.flush()


def _source_digest(s):
    """A shard's content digest, fed with its /inputs (the rows follow as they are copied)."""
    digest = store.ContentDigest()
    digest.strings(f"/{store.INPUTS}/source", s.sources.tolist())
    if s.skipped is not None:
        digest.strings(f"/{store.INPUTS}/skipped", s.skipped.reshape(-1).tolist())
    return digest


def _datasets(s):
    """{path: (dtype, shape)} of a shard's datasets, as store.content_datasets gives them."""
    strings = h5py.string_dtype("utf-8")
    found = {f"/{store.INPUTS}/source": (strings, s.sources.shape)}
    if s.skipped is not None:
        found[f"/{store.INPUTS}/skipped"] = (strings, s.skipped.shape)
    found.update({f"/{path}": (info[1], info[0]) for path, info in s.datasets.items()})
    return found


def _copy_rows(ds, shards, path, digests):
    """Copy dataset `path` of each shard into `ds`, a block at a time, feeding each shard's
    content digest. Reading errors name the shard; writing errors are the output's."""
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    block = max(1, COPY_BLOCK // row_bytes)
    start = 0
    for s in shards:
        with h5py.File(s.path, "r") as src:
            for low in range(0, s.rows, block):
                high = min(low + block, s.rows)
                with store.reading(s.path):
                    rows = store.checked(src[path])[low:high]
                digests[s.path].rows(f"/{path}", rows, ds.dtype)
                ds[start + low : start + high] = rows
        start += s.rows
