"""Dumps on a Ray cluster (`dump --ray`, `tensorprobe.ray.dump`): the sharded dump of
shard.py and merge.py, with Ray Data as the engine.

The driver opens the model once to list the inputs (the pipeline's feed, so the rows are
those a single dump takes, in its order) and to check the selection, then splits the R rows
into N blocks exactly as `dump --shard K/N` does (block K: rows [K*R//N, (K+1)*R//N), its
batches starting at its first row). A Ray Data `map_batches` over the block numbers, with
`Extractor` (a callable class: one model per worker process, loaded from its path there,
since a TensorFlow model does not pickle) as the function, has each worker write its blocks
with the pipeline's own `run_dump(..., shard="K/N")` into `OUTPUT.parts/`; then the parts are
merged (merge.py: virtual datasets, or a copy) into OUTPUT, checked row by row as any merge.

A worker that dies is restarted and its block retried by Ray (`max_retries`); a block written
before is kept (each part is written atomically and `resume`d). An error in tensorprobe's own
code (a bad input) is not retried: it is the same on every try, and is raised as it is.

Workers run in the driver's working folder (paths are passed as given, so /inputs/source and
the input fingerprint are those of a single dump): on a cluster of several machines the
model, the inputs and the output's folder must be at the same paths on every node (a shared
file system).
"""

import contextlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tensorprobe import errors

INSTALL = "pip install 'tensorprobe[ray]'"
PART = "part-{k:05d}-of-{n:05d}.h5"
BLOCKS_PER_WORKER = 4  # blocks per worker by default: a retried or slow block costs a quarter of a worker's share


def require_ray():
    """The `ray` module with Ray Data, or one error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise errors.TensorprobeError(f"{errors.name('ray')} needs Ray Data, which is not installed: {INSTALL}",
                                      argument="ray") from None
    return ray


# A Ray session's sockets live under its temporary folder, and a Unix socket's path may not
# exceed 107 bytes: a local Ray started under a long TMPDIR (CI machines') cannot start.
SOCKET_PATH = 107
SESSION_SOCKET = len("/session_2026-12-03_13-43-01_318384_4194304/sockets/plasma_store")


def local_temp_dir():
    """The temporary folder for a Ray started here: Ray's own (`TMPDIR/ray`) where its socket
    paths fit, else a short folder of this user's under /tmp."""
    import tempfile

    default = os.path.join(tempfile.gettempdir(), "ray")
    if len(os.fsencode(default)) + SESSION_SOCKET <= SOCKET_PATH:
        return default
    folder = os.path.join("/tmp", f"tensorprobe-ray-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.lstat(folder).st_uid != os.getuid():  # another user's, in a shared /tmp: one of our own
        folder = tempfile.mkdtemp(prefix="tensorprobe-ray-", dir="/tmp")
    return folder


def parts_folder(output):
    """The folder of shard files beside `output` (`acts.h5` -> `acts.h5.parts/`)."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def part_path(folder, k, n):
    return Path(folder) / PART.format(k=k, n=n)


def block_count(rows, batch_size, workers, blocks=None):
    """How many blocks to split `rows` into. `blocks` given: that many. Otherwise
    BLOCKS_PER_WORKER per worker, at most one per batch; and among the counts from there down
    to `workers`, the largest whose every boundary K*R//N falls on a batch boundary of a
    single dump (a multiple of `batch_size`), so that every batch holds the rows a single
    dump's does and the values are bit-identical; when none does, the first count (the values
    then may differ in the last bits, as with --shard: docs/large-jobs.md)."""
    if blocks is not None:
        return blocks
    batches = -(-rows // batch_size)
    wanted = max(1, min(workers * BLOCKS_PER_WORKER, batches))
    for n in range(wanted, max(1, min(workers, wanted)) - 1, -1):
        if all(k * rows // n % batch_size == 0 for k in range(1, n)):
            return n
    return wanted


@dataclass
class Work:
    """What every block shares: the model and how to open it, the inputs, the selection, the
    preparation, the storage, the batch size, where the parts go, how many blocks, and the
    working folder to run in."""

    model: str
    x: object
    named: tuple
    selection: object  # pipeline.Selection
    prep: object  # inputs.options.Options
    storage: object  # probe.Storage
    batch_size: int
    folder: str
    blocks: int
    cwd: str
    custom_objects: tuple = ()
    unsafe: bool = False
    signature: str | None = None
    raw_quantized: bool = False
    attrs: dict = field(default_factory=dict)  # root attributes to add (the CLI's `command`)


class Extractor:
    """The Ray Data worker: a callable class that opens the model once, in its own process,
    and writes each block it is given (a batch {"block": [K, ...]}) as the shard file K of N
    (`part-K-of-N.h5` in `folder`), with tensorprobe's own pipeline; it returns
    {"block", "path", "rows", "skipped", "nonfinite"} per block (a JSON text for the last two).

    Either `work` (a Work record, as `dump` builds it) or the arguments of `tensorprobe.dump`:

        import ray, tensorprobe.ray
        ds = ray.data.from_items([{"block": k} for k in range(8)])
        done = ds.map_batches(tensorprobe.ray.Extractor, batch_size=1,
                              fn_constructor_kwargs={"model": "/data/model.keras", "x": ["/data/photos"],
                                                     "folder": "/data/parts", "blocks": 8, "all_layers": True},
                              compute=ray.data.ActorPoolStrategy(size=2))
        paths = [row["path"] for row in done.iter_rows()]   # then: tensorprobe merge paths -o all.h5
    """

    def __init__(self, model=None, x=None, folder=None, blocks=None, *, work=None, cwd=None, named=(),
                 custom_objects=(), unsafe=False, signature=None, raw_quantized=False, **options):
        if work is None:
            work = _work(model, x, folder, blocks, cwd=cwd, named=named, custom_objects=custom_objects,
                         unsafe=unsafe, signature=signature, raw_quantized=raw_quantized, **options)
        from tensorprobe import api

        self.work = work
        os.chdir(work.cwd)  # the worker's process: paths mean what they meant to the driver
        os.makedirs(work.folder, exist_ok=True)
        self.backend = api.open_model(work.model, work.custom_objects, work.unsafe, work.signature,
                                      work.selection.wants_layers, work.raw_quantized).backend

    def __call__(self, batch):
        import json

        import numpy as np

        from tensorprobe import pipeline

        w = self.work
        done = {"block": [], "path": [], "rows": [], "skipped": [], "nonfinite": []}
        for k in np.asarray(batch["block"]).tolist():
            path = part_path(w.folder, k, w.blocks)
            # resume: a block written before (by a try that died after it) is kept as it is
            result = pipeline.run_dump(self.backend, w.x, w.named, path, w.selection, w.prep, w.storage,
                                       pipeline.Job(w.batch_size), overwrite=True, shard=f"{k}/{w.blocks}",
                                       resume=True, attrs=w.attrs)
            done["block"].append(k)
            done["path"].append(str(path))
            done["rows"].append(int(result.summary["attrs"]["samples"]))
            done["skipped"].append(json.dumps(result.skipped))
            done["nonfinite"].append(json.dumps(result.nonfinite))
        return {key: np.array(values) for key, values in done.items()}


def _work(model, x, folder, blocks, *, cwd=None, named=(), custom_objects=(), unsafe=False, signature=None,
          raw_quantized=False, batch_size=32, layers=(), match=None, all_layers=False, tensors=(),
          tensor_match=None, gradients=None, target_output=None, labels=None, training=False, jit=False,
          dtype=None, compression=None, reduce=None, attrs=None, **prepare):
    """A Work from the arguments of tensorprobe.dump (checked as it checks them)."""
    from tensorprobe import api
    from tensorprobe.probe import Storage, parse_compression

    if not isinstance(model, (str, os.PathLike)):
        raise errors.UsageError(f"{errors.name('model')}: give the model's path: each Ray worker loads it "
                                "itself (a loaded model does not travel to other processes)", argument="model")
    if folder is None or blocks is None:
        raise errors.UsageError("Extractor: give `folder` (where the parts go) and `blocks` (how many)")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise errors.UsageError(f"{errors.name('blocks')} {blocks!r}: expected an integer >= 1", argument="blocks")
    prep = api.preparation(**prepare)
    api._job(batch_size).check()
    selection = api._selection(layers, match, all_layers, tensors, tensor_match, gradients, target_output, labels,
                               training, jit)
    selection.check(prep.skip_bad)
    storage = Storage(dtype, reduce, parse_compression(compression) if compression else (None, None))
    return Work(os.fspath(model), api._api_x(x), tuple(named), selection, prep, storage, batch_size,
                os.fspath(folder), blocks, cwd or os.getcwd(), tuple(custom_objects), unsafe, signature,
                raw_quantized, dict(attrs or {}))


# ---- the driver ------------------------------------------------------------------------------

@dataclass
class Cluster:
    """Where and how wide: `address` (None: the running Ray of this process, or RAY_ADDRESS, or
    a new local one; "auto": a running cluster; "local": a new one on this machine; or an
    address), `workers` (None: one per node, or per `gpus_per_worker` GPUs), `gpus_per_worker`,
    `blocks` (None: see block_count), `max_retries` (tries of a block whose worker died)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    blocks: int | None = None
    max_retries: int = 3


def run(model, x, named, output, selection, prep, storage, batch_size, cluster, *, model_options=None, copy=False,
        overwrite=False, resume=False, attrs=None, on_block=None, quiet_ray=True):
    """The dump of `pipeline.run_dump`, on Ray: returns a pipeline.DumpResult of the merged
    `output`. `model`: a path; `model_options`: {custom_objects, unsafe, signature,
    raw_quantized}. `on_block(blocks done, blocks, rows done, rows)` is told each finished
    block. Ctrl-C (or any failure) stops the Ray job and leaves no output, nor the parts folder
    this run made unless `resume` (then a run again with `resume` computes only the blocks
    missing)."""
    from tensorprobe import api, pipeline, store

    ray = require_ray()
    model_options = dict(model_options or {})
    output = os.fspath(output)
    _check(x, named, cluster)
    store.check_output(output, overwrite)
    folder = parts_folder(output)
    made = _parts_folder(folder, overwrite, resume)
    try:
        # the driver lists the rows (and checks the selection) as a single dump would, before Ray starts
        backend = api.open_model(model, model_options.get("custom_objects", ()), model_options.get("unsafe", False),
                                 model_options.get("signature"), selection.wants_layers,
                                 model_options.get("raw_quantized", False)).backend
        source = pipeline.feed(backend, x, named, prep, selection.wants_layers)
        pipeline.extraction(backend, selection, storage, source)
        rows = source.rows
        with _connected(ray, cluster.address, quiet_ray):
            workers = cluster.workers or _default_workers(ray, cluster.gpus_per_worker)
            blocks = block_count(rows, batch_size, workers, cluster.blocks)
            work = Work(os.fspath(model), x, tuple(named), selection, prep, storage, batch_size, os.fspath(folder),
                        blocks, os.getcwd(), tuple(model_options.get("custom_objects", ())),
                        model_options.get("unsafe", False), model_options.get("signature"),
                        model_options.get("raw_quantized", False), dict(attrs or {}))
            done = _compute(ray, work, workers, cluster, rows, on_block)
        paths = [part_path(folder, k, blocks) for k in range(blocks)]
        from tensorprobe import merge as merging

        merging.merge(paths, output, copy, overwrite)
    except BaseException:
        if made and not resume:  # with `resume`, the blocks done are kept for the next try
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if copy:  # the output holds the rows: the parts are no longer needed
        for path in paths:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # where it is empty: anything else in it is not ours
    return pipeline.DumpResult(store.read_summary(output), *_outcomes(done))


def _check(x, named, cluster):
    """What needs no model: no standard input (a worker has none), sane numbers."""
    paths = [x] if isinstance(x, (str, os.PathLike)) else list(x) if isinstance(x, (list, tuple)) else []
    paths += [p for _, p in named]
    if any(isinstance(p, (str, os.PathLike)) and os.fspath(p) == "-" for p in paths):
        raise errors.UsageError(f"{errors.name('ray')}: standard input (-) cannot be read by Ray workers; "
                                "give files", argument="ray")
    for value, argument in ((cluster.workers, "workers"), (cluster.blocks, "blocks")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise errors.UsageError(f"{errors.name(argument)} {value!r}: expected an integer >= 1", argument=argument)
    if cluster.gpus_per_worker is not None and not cluster.gpus_per_worker > 0:
        raise errors.UsageError(f"{errors.name('gpus_per_worker')} {cluster.gpus_per_worker!r}: expected a number > 0",
                                argument="gpus_per_worker")


def _parts_folder(folder, overwrite, resume):
    """Make the parts folder; True when this run made it. An existing one is refused unless
    `resume` (its complete parts of this job are kept) or `overwrite` (its parts removed)."""
    if folder.exists():
        if resume:
            return False
        if not overwrite:
            raise errors.OutputExistsError(
                f"{errors.name('output')}: the parts folder '{folder}' exists; pass {errors.name('overwrite')} to "
                f"replace its parts or {errors.name('resume')} to keep those of this job", argument="output")
        for part in folder.glob("part-*-of-*.h5"):
            part.unlink()
        return False
    folder.mkdir()
    return True


@contextlib.contextmanager
def _connected(ray, address, quiet):
    """Ray, connected: the running one of this process, else `address` (a new local one for
    "local"); shut down afterwards where connected here. `quiet`: Ray's own log lines (and
    Ray Data's progress bars) kept off stderr, where tensorprobe's one `error:` line goes."""
    import ray.data

    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    started = not ray.is_initialized()
    try:
        if quiet:
            for lg in loggers:
                lg.setLevel(logging.CRITICAL)
            context.enable_progress_bars = False
        if started:
            starts = address == "local" or (address is None and not os.environ.get("RAY_ADDRESS"))
            local = {"_temp_dir": local_temp_dir()} if starts else {}
            ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                     logging_level=logging.CRITICAL if quiet else logging.INFO, **local)
        yield
    except ConnectionError as e:
        raise errors.TensorprobeError(f"{errors.name('ray')} {address or 'auto'}: cannot connect: {e}",
                                      argument="ray") from e
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        context.enable_progress_bars = bars
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _default_workers(ray, gpus_per_worker):
    resources = ray.cluster_resources()
    if gpus_per_worker:
        workers = int(resources.get("GPU", 0) // gpus_per_worker)
        if workers < 1:
            raise errors.UsageError(f"{errors.name('gpus_per_worker')} {gpus_per_worker}: the Ray cluster has "
                                    f"{resources.get('GPU', 0):g} GPUs", argument="gpus_per_worker")
        return workers
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def _compute(ray, work, workers, cluster, rows, on_block):
    """Every block, by `workers` Extractor actors: the rows Ray Data returns, one per block."""
    import ray.data

    resources = {"num_cpus": 1}
    # a worker that dies is restarted, its block tried again, `max_retries` times (Ray Data's own default: forever)
    retries = {"max_restarts": cluster.max_retries, "max_task_retries": cluster.max_retries}
    if cluster.gpus_per_worker:
        resources["num_gpus"] = cluster.gpus_per_worker
    ds = ray.data.from_items([{"block": k} for k in range(work.blocks)], override_num_blocks=work.blocks)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote arguments by keyword but names no other way to give these two
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        mapped = ds.map_batches(Extractor, fn_constructor_kwargs={"work": work}, batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=min(workers, work.blocks)),
                                **retries, **resources)
    done, rows_done = [], 0
    iterator = iter(mapped.iter_rows())
    try:
        for row in iterator:
            done.append(row)
            rows_done += int(row["rows"])
            if on_block is not None:
                on_block(len(done), work.blocks, rows_done, rows)
    except ray.exceptions.RayError as e:
        raise _error(e) from e
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # stops the streaming execution (its actors) on Ctrl-C or an error
    return sorted(done, key=lambda r: int(r["block"]))


def _error(e):
    """tensorprobe's own error inside a Ray error (a bad input in a worker), else one that says
    what Ray said, in one line."""
    seen, todo = set(), [e]
    while todo:
        c = todo.pop(0)
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, errors.TensorprobeError):
            return c
        todo += [getattr(c, "cause", None), c.__cause__, c.__context__]
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return errors.TensorprobeError(f"{errors.name('ray')}: the Ray job failed: {first}", argument="ray")


def _outcomes(done):
    """(skipped, nonfinite) of the merged dump from the blocks' own, rows offset to its rows."""
    import json

    skipped, first, offset = [], {}, 0
    for row in done:
        skipped += [tuple(s) for s in json.loads(row["skipped"])]
        for path, nans, infs, at in json.loads(row["nonfinite"]):
            total = first.get(path)
            first[path] = (nans, infs, at + offset) if total is None else \
                (total[0] + nans, total[1] + infs, total[2])
        offset += int(row["rows"])
    return skipped, [(path, *values) for path, values in first.items()]
