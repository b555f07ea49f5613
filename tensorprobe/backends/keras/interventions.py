"""Interventions on a Keras model: the edits of tensorprobe/edits.py applied inside the layer
walk (graph.py), compiled with tf.function as the extraction is (runner.py).

An edit is a function on the value at an origin (one output of one call of a layer), which
`Graph.evaluate(edit=...)` applies as soon as the value is produced, so every later layer
reads the edited value. Before anything runs, each edit is checked to reach the requested
outputs: a layer that never runs, or one the outputs do not depend on, is an error that says
why, never an edit that silently does nothing; and after the trace, every edit must have been
applied (a layer that its parent does not call for these inputs or in this mode).
"""

import re
from dataclasses import dataclass, field

import numpy as np

from tensorprobe import errors, probe
from tensorprobe.edits import edit_option
from tensorprobe.errors import InputError, UsageError
from tensorprobe.store import DatasetSpec
from tensorprobe.text import dtype_name, tf_error_line


@dataclass
class Site:
    """One edited value: the output of one call of a layer."""

    key: str  # what `applied` reports it under: the layer path, or PATH/call_K as named
    path: str  # the layer's path
    name: str  # its dataset name, as a dump of that layer alone names it (what patch/mean read)
    call: int
    origin: tuple
    symbolic: object  # its symbolic tensor: shape and dtype
    edit: object  # edits.Edit
    constant: object = None  # set, mean: the array; scale, add: the factor or term
    patch: object = None  # patch: the dump's rows, all of them (an array)


@dataclass
class Tally:
    """What the batches did, summed up: the largest change each site's edit made, and how far
    each output moved from the unedited model's."""

    sites: list
    output_names: list
    site_change: list = field(default_factory=list)
    output_change: list = field(default_factory=list)
    top_changed: list = field(default_factory=list)

    def __post_init__(self):
        self.site_change = [0.0] * len(self.sites)
        self.output_change = [0.0] * len(self.output_names)
        self.top_changed = [None] * len(self.output_names)

    def applied(self):
        result = {}
        for site, change in zip(self.sites, self.site_change):
            record = result.setdefault(site.key, {"calls": set(), "max_abs_change": 0.0})
            record["calls"].add(site.call)
            record["max_abs_change"] = max(record["max_abs_change"], change)
        return {k: {"calls": len(r["calls"]), "max_abs_change": r["max_abs_change"]} for k, r in result.items()}

    def change(self):
        return {name: {"max_abs_change": change, "top_class_changed": top}
                for name, change, top in zip(self.output_names, self.output_change, self.top_changed)}


_CALL = re.compile(r"(.+)/call_(\d+)")


def sites(graph, edits, rows):
    """[Site] for `edits` ([(name, Edit)]), with what `set`, `mean_from` and `patch_from` read,
    checked against the layers' shapes; `rows`: the input rows (a patch's dump must hold as
    many)."""
    found = []
    for name, edit in edits:
        option = edit_option(edit.kind)
        path, call = _resolve(graph, name, option)
        entry = graph.entries[path]
        if not entry.calls:
            why = entry.no_output or "it is never called in the model's graph (for these inputs, in this mode)"
            raise UsageError(f"{option} '{name}': layer '{path}' has no value to edit: {why}; the edit would do "
                             "nothing")
        if call is not None and call >= len(entry.calls):
            raise UsageError(f"{option} '{name}': layer '{path}' is called {len(entry.calls)} time(s) "
                             f"(call_0 to call_{len(entry.calls) - 1})")
        plan = probe.plan(graph, [entry])
        for spec, origin in zip(plan.specs, plan.origins):
            k = spec.extra.get("call", 0)
            if call is not None and k != call:
                continue
            site = Site(name if call is not None else path, path, spec.name, k, origin, graph.tensor(origin), edit)
            _prepare(site, option, rows)
            found.append(site)
    return found


def _resolve(graph, name, option):
    """(path, call or None): a layer as --layer names it, or PATH/call_K for one call of it."""
    match = _CALL.fullmatch(name)
    if match is not None and name not in graph.entries:
        try:
            return probe.resolve(graph, match.group(1), option), int(match.group(2))
        except errors.UnknownLayerError:
            pass
    return probe.resolve(graph, name, option), None


def _prepare(site, option, rows):
    """Check an edit against the value it edits; load what it reads."""
    edit, shape = site.edit, _shape(site.symbolic)
    where = f"{option} '{site.key}'"
    if dtype_name(site.symbolic.dtype) in ("string", "bool"):
        raise UsageError(f"{where}: layer '{site.path}' gives {dtype_name(site.symbolic.dtype)} values, which "
                         "no edit applies to")
    for axis_name, indexes, axis in (("channels", edit.channels, -1), ("positions", edit.positions, 1)):
        if indexes is None:
            continue
        if len(shape) < 2:
            raise UsageError(f"{where}: {axis_name} needs a value with an axis after the batch; "
                             f"'{site.name}' has the shape {_text(shape)}")
        size = shape[axis]
        bad = [i for i in indexes if (size is not None and not -size <= i < size) or (size is None and i < 0)]
        if bad:
            extent = f"has {size}" if size is not None else "has a size known only when it runs, and a negative " \
                                                            "index needs it"
            raise UsageError(f"{where}: {axis_name} {bad[0]} is out of range: axis {axis} of '{site.name}' "
                             f"{extent}")
    if edit.kind in ("scale", "add", "set"):
        site.constant = np.asarray(edit.value)
        _check_broadcast(site, site.constant.shape, shape, where)
    elif edit.reads_dump:
        array = _dump_rows(site, where, edit.value)
        if edit.kind == "mean":
            site.constant = array.astype("float64").mean(axis=0, keepdims=True)
        else:
            if len(array) != rows:
                raise UsageError(f"{where}: '{edit.value}' holds {len(array)} rows of '{site.name}', and the "
                                 f"inputs are {rows} rows: patching takes row i from row i")
            site.patch = array


def _shape(symbolic):
    return tuple(None if d is None else int(d) for d in symbolic.shape)


def _text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_broadcast(site, given, shape, where):
    """An array given for a value of `shape` must broadcast to it, batch axis aside (an array
    of one sample's shape, or with a batch axis of 1)."""
    full = tuple(given)
    if len(full) > len(shape) or any(g not in (1, d) and d is not None for g, d in
                                     zip(reversed(full), reversed(shape))):
        raise UsageError(f"{where}: an array of shape {full} does not broadcast to '{site.name}', of shape "
                         f"{_text(shape)}")
    if len(full) == len(shape) and full and full[0] != 1:
        raise UsageError(f"{where}: an array of shape {full} has a batch axis of {full[0]}; give one sample's "
                         f"shape {_text(shape[1:])}")


def _dump_rows(site, where, path):
    """All rows of the site's dataset in the dump at `path`, as computed (a dump written with
    --reduce holds something else)."""
    import os

    from tensorprobe import store

    if not os.path.isfile(path):
        raise UsageError(f"{where}: '{path}': no such file")
    with store.open_dump(path) as f:
        if f.attrs.get("reduce", "none") not in ("none", b"none"):
            raise UsageError(f"{where}: '{path}' holds values pooled with --reduce, not the layer's outputs")
        suffix = site.name[len(site.path):]
        names = [site.name, f"{site.path}/{probe.CONTAINER_OUTPUT}{suffix}"]
        found = next((f"activations/{n}" for n in names if f"activations/{n}" in f), None)
        if found is None:
            raise UsageError(f"{where}: '{path}' holds no dataset '{site.name}' (dump it with --layer "
                             f"{site.path})")
        array = f[found][:]
    shape = _shape(site.symbolic)[1:]
    if len(array.shape) - 1 != len(shape) or any(d is not None and d != n for d, n in zip(shape, array.shape[1:])):
        raise UsageError(f"{where}: '{path}' holds '{site.name}' with samples of shape {tuple(array.shape[1:])}, "
                         f"and the layer gives {_text(shape)}")
    return array


def check_reached(graph, sites, origins, option=None):
    """Every site must run for `origins` (the requested outputs and layers): refuse an edit of
    a value they do not depend on, which would change nothing. `option`: what named the
    sites, if not their edits."""
    needed = graph.needed(origins)
    for site in sites:
        key = site.origin[0]
        anchor = key[:-2] if _runtime(key) else key  # a runtime layer runs while its node does
        if anchor is not None and anchor not in needed:
            raise UsageError(f"{option or edit_option(site.edit.kind)} '{site.key}': the model's outputs (and the "
                             f"layers asked for) do not depend on '{site.name}', so the edit would change nothing")


def _runtime(key):
    return key is not None and len(key) >= 2 and isinstance(key[-2], str)


def output_plan(graph, selected):
    """The plan: the model's outputs (group `outputs`), then the `selected` layers' datasets."""
    names = graph.output_names()
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    specs = []
    for i, (name, origin) in enumerate(zip(names, graph.outputs)):
        entry = next((e for e in graph.entries.values() if any(o == origin for c in e.calls for _, o in c)), None)
        layer, layer_class = (entry.path, entry.class_name) if entry is not None else ("", "")
        specs.append(DatasetSpec(name, layer, layer_class, {"order": i}, "outputs"))
    chosen = probe.plan(graph, selected) if selected else probe.Plan([], [])
    return probe.Plan(specs + chosen.specs, list(graph.outputs) + chosen.origins)


def edit_function(graph, plan, sites, outputs, training=False, baseline=True, check=None):
    """run(batch list, labels) -> one array per plan spec, with the `sites` edited; its
    `.tally` sums up what each batch changed. `outputs`: the number of the plan's first specs
    that are the model's outputs (compared with the unedited model's when `baseline`)."""
    import tensorflow as tf

    from tensorprobe.backends.keras.runner import Compiled

    check_reached(graph, sites, plan.origins)
    needed = graph.needed(plan.origins) | {s.origin[0] for s in sites if _runtime(s.origin[0])}
    clean_needed = graph.needed(graph.outputs)
    count = len(graph.inputs)
    patched = [s for s in sites if s.patch is not None]
    tally = Tally(sites, [s.name for s in plan.specs[:outputs]])

    def extract(*args):
        inputs, rows = list(args[:count]), dict(zip(map(id, patched), args[count:]))
        changes = {}
        functions = {}
        for i, site in enumerate(sites):
            edit = _edit_function(site, rows.get(id(site)), lambda change, i=i: changes.__setitem__(i, change))
            before = functions.get(site.origin)  # a nested model's output is its last layer's: both apply
            functions[site.origin] = edit if before is None else (lambda v, f=edit, g=before: f(g(v)))
        values = graph.evaluate(inputs, plan.origins, needed, training=training, edit=functions)
        missing = [s for i, s in enumerate(sites) if i not in changes]
        if missing:
            site = missing[0]
            raise UsageError(f"{edit_option(site.edit.kind)} '{site.key}': layer '{site.path}' was not called when "
                             f"the model ran ({'training' if training else 'inference'} mode): its parent does not "
                             "call it for these inputs, so the edit would change nothing")
        extras = [changes[i] for i in range(len(sites))]
        if baseline:
            extras += graph.evaluate(inputs, graph.outputs, clean_needed, training=training)
        return values + extras

    patch_specs = [tf.TensorSpec(shape=(None, *_shape(s.symbolic)[1:]), dtype=s.symbolic.dtype, name=f"patch_{j}")
                   for j, s in enumerate(patched)]
    compiled = Compiled(extract, graph.inputs, patch_specs, check=check)

    done = [0]  # rows computed so far: the rows of the patches for the next batch

    def run(batch, labels=None):
        n = len(batch[0])
        start, stop = done[0], done[0] + n
        feeds = [s.patch[start:stop].astype(dtype_name(s.symbolic.dtype)) for s in patched]
        results = compiled(batch, feeds)
        done[0] = stop
        arrays, rest = results[:len(plan.specs)], results[len(plan.specs):]
        for i, change in enumerate(rest[:len(sites)]):
            tally.site_change[i] = max(tally.site_change[i], float(change))
        if baseline:
            for j, (edited, clean) in enumerate(zip(arrays[:outputs], rest[len(sites):])):
                _compare_output(tally, j, edited, clean)
        return arrays

    run.tally = tally
    return run


def _compare_output(tally, j, edited, clean):
    if edited.dtype.kind not in "biuf":
        return
    diff = np.abs(edited.astype("float64") - clean.astype("float64"))
    if diff.size:
        tally.output_change[j] = max(tally.output_change[j], float(np.nanmax(diff)))
    if edited.ndim == 2 and edited.shape[1] >= 2 and edited.dtype.kind == "f":  # a classifier's scores
        changed = int(np.sum(np.argmax(edited, axis=1) != np.argmax(clean, axis=1)))
        tally.top_changed[j] = (tally.top_changed[j] or 0) + changed


def _edit_function(site, rows, report):
    """function(value) -> the edited value; `report(change)` gets the largest absolute change
    it made (a scalar tensor), which also says that it was applied."""
    import tensorflow as tf

    edit = site.edit

    def apply(value):
        dtype = value.dtype
        if edit.kind == "zero":
            new = tf.zeros_like(value)
        elif edit.kind == "scale":
            new = value * tf.cast(site.constant, dtype)
        elif edit.kind == "add":
            new = value + tf.cast(site.constant, dtype)
        elif edit.kind in ("set", "mean"):
            new = tf.broadcast_to(tf.cast(site.constant, dtype), tf.shape(value))
        elif edit.kind == "patch":
            new = tf.cast(rows, dtype)
        else:
            new = tf.convert_to_tensor(edit.value(value))
            where = f"edits '{site.key}'"
            if new.dtype != dtype:
                raise UsageError(f"{where}: the function returned {new.dtype.name} values for a value of {dtype.name}")
            if not new.shape.is_compatible_with(value.shape):
                raise UsageError(f"{where}: the function returned the shape {new.shape}, the value has {value.shape}")
        mask = _mask(value, edit)
        if mask is not None:
            new = tf.where(mask, new, value)
        report(tf.reduce_max(tf.abs(tf.cast(new, tf.float64) - tf.cast(value, tf.float64))))
        return new

    return apply


def _mask(value, edit):
    """Where the edit applies (broadcast to the value), or None for everywhere."""
    import tensorflow as tf

    rank = value.shape.rank
    mask = None
    for what, indexes, axis in (("channels", edit.channels, rank - 1), ("positions", edit.positions, 1)):
        if indexes is None:
            continue
        size = tf.shape(value)[axis]
        wanted = tf.math.floormod(tf.constant(indexes, tf.int32), size)  # negative indexes were checked
        # an axis of a size known only when it runs: an index past it is an error, never a no-op
        tf.debugging.assert_less(tf.constant(indexes, tf.int32), size,
                                 message=f"{what} index out of range of axis {axis}")
        hit = tf.reduce_any(tf.equal(tf.range(size)[:, None], wanted[None, :]), axis=1)
        shape = [1] * rank
        shape[axis] = -1
        hit = tf.reshape(hit, shape)
        mask = hit if mask is None else tf.logical_and(mask, hit)
    return mask


# ---- activation patching sweeps ----------------------------------------------------------------

@dataclass
class Sweep:
    """The compiled functions of a patching sweep: `clean(batch)` -> (the chosen layers' values,
    the metric per row, the output); `metric(batch, clean output)` -> the metric per row of the
    unedited model; `patched(j, batch, clean_rows, clean output)` -> (variants, rows): the
    metric with layer j's value (at each position, with `positions`) replaced by the clean
    run's rows."""

    names: list  # the patched datasets, in model order
    variants: list  # per dataset: how many variants (1, or the positions; None: known once it runs)
    clean: object
    metric: object
    patched: object


def metric_function(metric, output_symbolic):
    """(metric kind, its numbers) -> function(output, clean output or None) -> one value per row."""
    import tensorflow as tf

    kind, values = metric
    size = output_symbolic.shape[-1]
    if kind in ("logit_diff", "prob"):
        bad = [v for v in values if size is not None and v >= size]
        if len(output_symbolic.shape) != 2 or bad:
            raise UsageError(f"--metric {kind}:{','.join(map(str, values))}: the output has the shape "
                             f"{_text(_shape(output_symbolic))}; it needs (batch, classes) with index < {size}")
    if kind == "logit_diff":
        return lambda out, clean: out[:, values[0]] - out[:, values[1]]
    if kind == "prob":
        return lambda out, clean: tf.nn.softmax(out, axis=-1)[:, values[0]]
    return lambda out, clean: tf.sqrt(tf.reduce_sum(tf.reshape(tf.square(out - clean), (tf.shape(out)[0], -1)), 1))


def sweep(graph, selected, positions, metric, target_output=None, check=None):
    """A Sweep over the `selected` layers' outputs (every call and output of each)."""
    import tensorflow as tf

    from tensorprobe.backends.keras.runner import output_origin

    out_origin, _ = output_origin(graph, target_output)
    plan = probe.plan(graph, selected)
    check_reached(graph, [Site(s.name, s.layer, s.name, 0, o, graph.tensor(o), None)
                          for s, o in zip(plan.specs, plan.origins)], [out_origin], errors.name("layers"))
    score = metric_function(metric, graph.tensor(out_origin))
    variants = []
    for spec, origin in zip(plan.specs, plan.origins):
        shape = _shape(graph.tensor(origin))
        if positions and len(shape) < 3:
            raise UsageError(f"--positions: '{spec.name}' has the shape {_text(shape)}, with no sequence axis "
                             "after the batch; leave it out of --layer/--match")
        variants.append(shape[1] if positions else 1)  # None: as many as the inputs give it
    count = len(graph.inputs)
    needed_clean = graph.needed(plan.origins + [out_origin])
    needed_out = graph.needed([out_origin])
    signature = [tf.TensorSpec(t.shape, t.dtype) for t in graph.inputs]

    def clean(*inputs):
        values = graph.evaluate(list(inputs), plan.origins + [out_origin], needed_clean)
        return values[:-1] + [score(values[-1], values[-1]), values[-1]]

    def plain(*args):
        inputs, reference = list(args[:count]), args[count]
        return score(graph.evaluate(inputs, [out_origin], needed_out)[0], reference)

    def patched_function(j):
        origin = plan.origins[j]
        runtime = _runtime(origin[0])

        def run(*args):
            inputs, rows, reference = list(args[:count]), args[count], args[count + 1]
            n = tf.shape(rows)[0]
            v = tf.shape(rows)[1] if positions else 1  # one variant per position, all in one batch

            def tile(x):  # v copies of the batch, one after the other; a value shared by every sample as it is
                if x.shape.rank == 0 or x.shape[0] == 1:
                    return x
                return tf.tile(x, tf.concat([[v], tf.ones([tf.rank(x) - 1], tf.int32)], 0))

            clean_rows = tile(rows)

            def replace(value):
                if not runtime:  # the layer's own value, one copy: the copies start here
                    value = tile(value)
                if not positions:
                    return tf.cast(clean_rows, value.dtype)
                variant = tf.range(tf.shape(value)[0]) // n  # row r of the copies patches position r // n
                hit = tf.equal(variant[:, None], tf.range(tf.shape(value)[1])[None, :])
                hit = tf.reshape(hit, tf.concat([tf.shape(hit), tf.ones([tf.rank(value) - 2], tf.int32)], 0))
                return tf.where(hit, tf.cast(clean_rows, value.dtype), value)

            # the layers before the patched one run once on the batch; from it on, on the copies (a
            # runtime layer's node gets the copies as its inputs)
            widen = (tile, {origin[0][:-2]} if runtime else set())
            needed = needed_out | ({origin[0]} if runtime else set())
            out = graph.evaluate(inputs, [out_origin], needed, edit={origin: replace}, widen=widen)[0]
            return tf.reshape(score(out, tile(reference)), (v, n))

        symbolic = graph.tensor(origin)
        specs = signature + [tf.TensorSpec(symbolic.shape, symbolic.dtype),
                             tf.TensorSpec(graph.tensor(out_origin).shape, graph.tensor(out_origin).dtype)]
        return tf.function(run, input_signature=specs, autograph=False)

    out_spec = tf.TensorSpec(graph.tensor(out_origin).shape, graph.tensor(out_origin).dtype)
    compiled_clean = tf.function(clean, input_signature=signature, autograph=False)
    compiled_plain = tf.function(plain, input_signature=signature + [out_spec], autograph=False)
    compiled = [patched_function(j) for j in range(len(plan.specs))]
    for function in [compiled_clean, compiled_plain, *compiled]:
        if check is not None:
            check(function.get_concrete_function())

    def call(function, *args):
        try:
            return function(*args)
        except (ValueError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            raise InputError(f"the model could not compute this batch: {tf_error_line(e)}") from e

    return Sweep([s.name for s in plan.specs], variants,
                 lambda batch: [t.numpy() for t in call(compiled_clean, *batch)],
                 lambda batch, reference: call(compiled_plain, *batch, reference).numpy(),
                 lambda j, batch, rows, reference: call(compiled[j], *batch, rows, reference).numpy())

