"""Dumps on a Ray cluster: `tensorprobe.ray.dump` (what `tensorprobe dump --ray` runs) and the
Ray Data worker class `tensorprobe.ray.Extractor`, for pipelines of your own. Needs the extra:
`pip install 'tensorprobe[ray]'`. The engine is tensorprobe/distributed.py (this module's
name is Ray's: it imports Ray only through that one).

    import tensorprobe.ray
    summary = tensorprobe.ray.dump("model.keras", ["photos/"], "acts.h5", all_layers=True,
                                   address="local", workers=2)
"""

from tensorprobe.distributed import INSTALL, Extractor

__all__ = ["dump", "Extractor", "INSTALL"]


def dump(model, x, output, *, address=None, workers=None, gpus_per_worker=None, blocks=None, max_retries=3,
         copy=False, overwrite=False, resume=False, batch_size=32, custom_objects=(), unsafe=False,
         signature=None, raw_quantized=False, progress=None, **options):
    """`tensorprobe.dump` on Ray: the rows of `x` split into `blocks` as `shard="K/N"` splits
    them, each computed by a Ray Data worker that loads `model` (a path) itself, written as a
    shard file into `OUTPUT.parts/`, and merged into `output` (virtual datasets over the parts,
    which stay beside it, or a self-contained `copy`, the parts then removed). The values, the
    rows and /inputs/source are those of `tensorprobe.dump` on one machine. Returns the summary
    `summary --json` prints.

    `address`: None (this process's Ray if running, else RAY_ADDRESS or a new local one),
    "auto", "local" or a cluster's address. `workers`: Ray Data actors (default: one per node,
    or per `gpus_per_worker` GPUs). `max_retries`: tries of a block whose worker died.
    `progress`: a callable told (blocks done, blocks, rows done, rows) after each block, or
    True for a line on stderr. Other arguments as `tensorprobe.dump`'s (layers, match,
    all_layers, tensors, gradients, dtype, reduce, compression, the preparation options).

        >>> summary = tensorprobe.ray.dump("sample_models/transfer.keras", ["inputs/"], "acts.h5",
        ...                                all_layers=True, address="local", workers=2)
    """
    from tensorprobe import distributed, store
    from tensorprobe.report import summary_record

    store.check_hdf5_name(output, "output")
    cluster = distributed.Cluster(address, workers, gpus_per_worker, blocks, max_retries)
    work = distributed._work(model, x, distributed.parts_folder(output), 1, batch_size=batch_size, **options)
    model_options = {"custom_objects": tuple(custom_objects), "unsafe": unsafe, "signature": signature,
                     "raw_quantized": raw_quantized}
    on_block = _print_block if progress is True else progress or None
    result = distributed.run(work.model, work.x, (), output, work.selection, work.prep, work.storage, batch_size,
                             cluster, model_options=model_options, copy=copy, overwrite=overwrite, resume=resume,
                             on_block=on_block)
    return summary_record(result.summary, output)


def _print_block(done, blocks, rows_done, rows):
    import sys

    print(f"ray: {done}/{blocks} blocks, {rows_done:,}/{rows:,} rows", file=sys.stderr, flush=True)
