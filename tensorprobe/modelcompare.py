"""`tensorprobe compare`: run two models on the same prepared inputs, batch by batch, compare the
outputs of the layers both have (paired by layer path), and name the first pair, in model A's
order, that is out of tolerance: where the two models part.

Pairs, in the order model A computes them (a nested model's own output after its layers'):
every layer path both models list (input layers and layers that never run aside), or
those that `layers`/`match` choose in model A; `pairs` ({path in A: path in B}) add or
override pairings where names differ. A layer called several times or with several outputs
pairs call by call and output by output. A layer only one model has is listed, never dropped.

Per pair, over every element of every sample (float64): the largest absolute and relative
error (relative to B, the reference, where B is not 0), the mean absolute error, the cosine
similarity of A and B, and the signal-to-noise ratio 10 log10(sum B^2 / sum (A - B)^2) in dB
(inf when they are equal). A pair is within tolerance by its criterion: `scaled:X` when its
largest error is at most X times B's largest absolute value; `snr:DB` when its SNR is at least
DB; `cosine:X` when its cosine is at least X; `allclose` when every element passes numpy's rule
|a - b| <= atol + rtol |b| (NaN with NaN and equal infinities pass). A NaN on one side fails
every criterion. Without one, the criterion is chosen by what the two models compute in
(`default_criterion`). Model B's inputs are fed by name (`input_order`).
Values of the same size whose shapes differ only by layout (NCHW in A, NHWC in B, or the other
way) are compared after moving the channel axis, and the pair says so.

Memory holds one batch of both models' outputs and a few numbers per pair, whatever the number
of inputs; `save_a`/`save_b` also write each model's outputs as a dump.
"""

import math
from dataclasses import dataclass

import numpy as np

from tensorprobe.dumpdiff import (ATOL, ELEMWISE, RTOL, ErrorStat, RunningDiff, StringDiff, Tolerances,
                                  ValueBudget, parse_error_stat, tolerance_rules)
from tensorprobe import errors
from tensorprobe.errors import UsageError

CONTAINER = "/__output__"


# RTOL, ATOL (dumpdiff's): numpy.allclose's tolerances, the rule when --rtol/--atol are given alone.
# The default criteria, chosen by what the two models compute in (see `default_criterion`).
FLOAT_SCALED = 1e-4  # float32 vs float32: the largest error within 1e-4 of the layer's largest value
REDUCED_SNR = 20.0  # int8, float16... on either side: an SNR of at least 20 dB
KINDS = {
    "allclose": "every element within numpy's |a - b| <= atol + rtol |b|",
    "scaled": "max |A - B| <= X max |B|",
    "snr": "SNR >= X dB",
    "cosine": "cosine >= X",
}


@dataclass(frozen=True)
class Criterion:
    """When a pair is within tolerance. `reason`: why this one (given, or the default for the
    two models' precisions)."""

    kind: str  # "allclose" (rtol, atol), "scaled", "snr" or "cosine" (value)
    value: float | None = None
    rtol: float = RTOL
    atol: float = ATOL
    reason: str = "given"
    rtol_rules: tuple = ()  # allclose's ((glob, rtol), ...) per pair path, the first match wins
    atol_rules: tuple = ()
    stat: ErrorStat = ELEMWISE  # what allclose's tolerances apply to (dumpdiff's module docstring)

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def tolerances(self):
        return Tolerances(self.rtol, self.atol, self.rtol_rules, self.atol_rules, self.stat)

    def describe(self):
        """'scaled:0.0001 (max |A - B| <= X max |B|; the default for A float32, B float32)'."""
        what = f"rtol {self.rtol:g}, atol {self.atol:g}" if self.kind == "allclose" else str(self)
        if self.tolerances.custom:
            rule = KINDS[self.kind] if self.stat == ELEMWISE else (
                f"{self.stat} of |A - B| <= atol or {self.stat} of |A - B| / |B| <= rtol")
            return f"{what}, {self.tolerances.describe()} ({rule}; {self.reason})"
        return f"{what} ({KINDS[self.kind]}; {self.reason})"

    def passes(self, record):
        if record["nonfinite_mismatches"]:  # NaN on one side, or unlike infinities: never within
            return False
        if self.kind == "allclose" and self.stat != ELEMWISE:
            return record["within_stat"]
        if self.kind == "snr":
            return record["snr_db"] is not None and record["snr_db"] >= self.value
        if self.kind == "cosine":
            return record["cosine"] is not None and record["cosine"] >= self.value
        if self.kind == "scaled":
            return record["max_abs_error"] <= self.value * record["max_abs_b"]
        return record["outside_tolerance"] == 0


def _threshold(text, argument):
    """The number after 'snr:'/'cosine:'/'scaled:', checked against the metric's range."""
    kind, _, number = text.partition(":")
    try:
        value = float(number)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise UsageError(f"{errors.name(argument)} '{text}': {number!r} is not a finite number", argument=argument)
    if kind == "cosine" and not -1 <= value <= 1:
        raise UsageError(f"{errors.name(argument)} '{text}': a cosine similarity lies in [-1, 1]", argument=argument)
    if kind == "scaled" and value < 0:
        raise UsageError(f"{errors.name(argument)} '{text}': the scaled tolerance must be >= 0", argument=argument)
    return value


def parse_metric(text, rtol=None, atol=None, argument="metric", error_stat=None):
    """The criterion the user gave, or None for the default by the models' precisions (see
    `default_criterion`): 'allclose' (numpy's rule with rtol/atol), 'scaled:X', 'snr:DB',
    'cosine:X'; --rtol/--atol alone mean 'allclose'. `rtol`/`atol` may be rules per pair
    path (dumpdiff.tolerance_rules), `error_stat` what they apply to (dumpdiff.parse_error_stat),
    which means 'allclose' too. Checked before any model is loaded."""
    rtol_default, rtol_rules = tolerance_rules(rtol, "rtol")
    atol_default, atol_rules = tolerance_rules(atol, "atol")
    stat = ELEMWISE if error_stat is None else parse_error_stat(error_stat)
    rtol = None if rtol is None or (rtol_default is None and not rtol_rules) else rtol
    atol = None if atol is None or (atol_default is None and not atol_rules) else atol
    if isinstance(text, Criterion):
        return text
    if text is None:
        if rtol is None and atol is None and error_stat is None:
            return None
        text = "allclose"
    if not isinstance(text, str):
        raise UsageError(f"{errors.name(argument)} {text!r}: expected a string such as 'snr:30'", argument=argument)
    text = text.strip()
    kind = text.partition(":")[0]
    if text == "allclose":
        return Criterion("allclose", rtol=RTOL if rtol_default is None else rtol_default,
                         atol=ATOL if atol_default is None else atol_default,
                         rtol_rules=rtol_rules, atol_rules=atol_rules, stat=stat)
    if kind not in KINDS or kind == "allclose" or ":" not in text:
        raise UsageError(f"{errors.name(argument)} '{text}': expected allclose, scaled:X (e.g. scaled:1e-4), "
                         "snr:DB (e.g. snr:30) or cosine:X (e.g. cosine:0.999)", argument=argument)
    if rtol is not None or atol is not None:
        raise UsageError(f"{errors.name('rtol')}/{errors.name('atol')} set the allclose rule, "
                         f"{errors.name(argument)} '{text}' another: give one", argument=argument)
    if error_stat is not None:
        raise UsageError(f"{errors.name('error_stat')} sets what the allclose rule's tolerances apply to, "
                         f"{errors.name(argument)} '{text}' another rule: give one", argument=argument)
    return Criterion(kind, _threshold(text, argument))


def default_criterion(precision_a, precision_b):
    """The criterion when none is given, by the pair of precisions. Two float32 models (Keras
    against its export, a float TFLite file, a frozen graph) differ by float32 rounding, which
    grows with the depth and the values' range but stays near 1e-6 of a layer's largest value:
    `scaled:1e-4` takes that and refuses a real difference (a weight, a swapped input) on any
    element. Against a quantized or half-precision model every element differs by up to a
    quantization step, so an element-wise rule marks every pair: the SNR judges the whole
    layer, and 20 dB (an error a tenth of the signal, in RMS) passes int8 quantization noise
    and refuses a wrong computation (0 dB or less)."""
    pair = f"A {precision_a}, B {precision_b}"
    if precision_a == precision_b == "float32":
        return Criterion("scaled", FLOAT_SCALED, reason=f"the default for {pair}")
    return Criterion("snr", REDUCED_SNR, reason=f"the default for {pair}")


class Agreement(RunningDiff):
    """RunningDiff (errors, tolerance, worst element) plus the sums behind the mean absolute
    error, the cosine similarity and the SNR, over the finite pairs of elements."""

    def __init__(self, shape, rtol, atol, stat=None, budget=None, path=None):
        super().__init__(shape, rtol, atol, stat, budget, path)
        self.count = 0
        self.sum_abs = self.sum_ab = self.sum_aa = self.sum_bb = self.sum_err2 = 0.0
        self.max_abs_b = 0.0  # the largest finite |b|: the layer's scale

    def update(self, a, b, start_row):
        super().update(a, b, start_row)
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        finite = np.isfinite(a) & np.isfinite(b)
        if not finite.all():
            a, b = a[finite], b[finite]
        err = a - b
        if b.size:
            self.max_abs_b = max(self.max_abs_b, float(np.abs(b).max()))
        self.count += a.size
        self.sum_abs += float(np.abs(err).sum())
        self.sum_ab += float(a @ b)
        self.sum_aa += float(a @ a)
        self.sum_bb += float(b @ b)
        self.sum_err2 += float(err @ err)

    def result(self):
        record = super().result()
        norms = math.sqrt(self.sum_aa * self.sum_bb)
        if self.sum_err2 == 0:
            snr = math.inf
        elif self.sum_bb == 0:
            snr = -math.inf
        else:
            snr = 10 * math.log10(self.sum_bb / self.sum_err2)
        record.update({
            "mean_abs_error": self.sum_abs / self.count if self.count else 0.0,
            "cosine": self.sum_ab / norms if norms else (1.0 if self.sum_err2 == 0 else 0.0),
            "snr_db": snr,
            "max_abs_b": self.max_abs_b,
        })
        return record


class StringAgreement(StringDiff):
    """Agreement's counterpart for string values (a StringLookup's tokens): equal or not, by
    `diff`'s rule; no error, cosine or SNR, and the pair agrees only when every string is
    equal, whatever the criterion."""

    def update(self, a, b, start_row):
        super().update(a, b, start_row)

    def result(self):
        return {**super().result(), "mean_abs_error": None, "cosine": None, "snr_db": None, "max_abs_b": None}


def _is_string(array):
    return array.dtype.kind in "OSU"


def eligible(graph):
    """{path: entry} of the layers that have an output (input layers aside), in model order."""
    return {p: e for p, e in graph.entries.items() if e.calls and e.class_name != "InputLayer"}


def pairings(graph_a, graph_b, layers=(), match=None, pairs=()):
    """([(path in A, path in B)] in A's order, [paths only in A], [paths only in B])."""
    from tensorprobe import probe

    in_a, in_b = eligible(graph_a), eligible(graph_b)
    explicit = {}
    for a_path, b_path in pairs:
        a_full, b_full = probe.resolve(graph_a, a_path), probe.resolve(graph_b, b_path)
        explicit[a_full] = b_full
    if layers or match:
        chosen = [e.path for e in probe.select(graph_a, layers, match)]
    else:
        chosen = list(in_a)
    paired, used_b = [], set(explicit.values())
    for path in chosen:
        if path in explicit:
            paired.append((path, explicit[path]))
        elif path in in_b and path not in used_b:
            paired.append((path, path))
            used_b.add(path)
    for a_path, b_path in explicit.items():  # a pairing of a path --layer/--match left out
        if a_path not in chosen:
            paired.append((a_path, b_path))
    if not paired:
        raise UsageError("the two models have no layer path in common: pair layers with "
                         + errors.words("--pair A_PATH=B_PATH", "pairs={A path: B path}"), argument="pairs")
    position = {path: k for k, path in enumerate(children_first([a for a, _ in paired]))}
    paired.sort(key=lambda pair: position[pair[0]])
    if layers or match:
        only_a, only_b = [], []
    else:
        paired_a = {a for a, _ in paired}
        only_a = [p for p in in_a if p not in paired_a]
        only_b = [p for p in in_b if p not in used_b]
    return paired, only_a, only_b


def fused(graph, paths):
    """{path: the layer whose op computes it, or None} for those of `paths` that `graph` (a
    converted model: TFLite) lists as fused into another layer's op, so they have no value of
    their own to compare."""
    found = {}
    for path in paths:
        entry = graph.entries.get(path)
        if entry is not None and entry.reach == "fused":
            found[path] = entry.fused_into
    return found


def input_order(inputs_a, inputs_b):
    """(for each input of B, the index of A's input that feeds it; None, or why the inputs
    were matched by position). `inputs_*`: Model.inputs. By name when both models name the
    same inputs (a Keras model and its export, whose signature sorts them); by position when
    the names differ, said so when there are several."""
    names_a, names_b = [i["name"] for i in inputs_a], [i["name"] for i in inputs_b]
    if len(names_a) != len(names_b):
        raise UsageError(f"the models take different inputs: A {len(names_a)} ({', '.join(names_a)}), "
                         f"B {len(names_b)} ({', '.join(names_b)})")
    if sorted(names_a) == sorted(names_b) and len(set(names_a)) == len(names_a):
        return [names_a.index(name) for name in names_b], None
    note = None
    if len(names_a) > 1:
        note = (f"inputs matched by position, as their names differ: "
                + ", ".join(f"A {a} -> B {b}" for a, b in zip(names_a, names_b)))
    return list(range(len(names_b))), note


def children_first(paths):
    """`paths` (parents before children, as `layers` lists them) in the order they are
    computed: a nested model's or custom layer's own output after those of its layers."""
    ordered, open_ = [], []
    for path in paths:
        while open_ and not path.startswith(open_[-1] + "/"):
            ordered.append(open_.pop())
        open_.append(path)
    ordered.extend(reversed(open_))
    return ordered


def matched_specs(plan_a, plan_b, paired):
    """[(index in plan A, index in plan B, dataset name)] for the datasets both plans hold for
    each pair, by call and output; plus the names of datasets on one side only."""
    def keyed(plan, side):
        keys = {}
        for i, spec in enumerate(plan.specs):
            suffix = spec.name[len(spec.layer):].replace(CONTAINER, "", 1)
            keys[(side[spec.layer], suffix)] = i
        return keys

    ids_a = {a: k for k, (a, _) in enumerate(paired)}
    ids_b = {b: k for k, (_, b) in enumerate(paired)}
    keys_a, keys_b = keyed(plan_a, ids_a), keyed(plan_b, ids_b)
    matched = [(i, keys_b[key], plan_a.specs[i].name.replace(CONTAINER, "", 1))
               for key, i in keys_a.items() if key in keys_b]
    unmatched_a = [plan_a.specs[i].name for key, i in keys_a.items() if key not in keys_b]
    unmatched_b = [plan_b.specs[i].name for key, i in keys_b.items() if key not in keys_a]
    return matched, unmatched_a, unmatched_b


FIRST_TO_LAST = "A is channels-first: compared after moving its channel axis last"
LAST_TO_FIRST = "A is channels-last: compared after moving its channel axis first"
MOVES = {FIRST_TO_LAST: (1, -1), LAST_TO_FIRST: (-1, 1)}


def aligned(a, b, move=None):
    """(a, b, layout note) with A's layout moved to B's when they differ only by the channel
    axis (NCHW vs NHWC); (a, b, None) otherwise. `move`, the note the other pairs of the two
    models took, decides a pair whose shapes fit either way (channels = height = width)."""
    if a.ndim != b.ndim or a.ndim < 3:
        return a, b, None
    fits = [note for note, (source, target) in MOVES.items() if np.moveaxis(a, source, target).shape == b.shape]
    if a.shape == b.shape:
        if move in fits and np.moveaxis(a, *MOVES[move]).shape == a.shape:
            return np.moveaxis(a, *MOVES[move]), b, move
        return a, b, None
    if fits:
        return np.moveaxis(a, *MOVES[fits[0]]), b, fits[0]
    return a, b, None


class Comparison:
    """The running comparison of the matched datasets, batch by batch."""

    def __init__(self, matched, rows, criterion):
        self.matched, self.rows = matched, rows
        self.rtol, self.atol, self.criterion = criterion.rtol, criterion.atol, criterion
        # allclose's tolerances per pair and what they apply to; other criteria keep the defaults
        self.tolerances = criterion.tolerances if criterion.kind == "allclose" else Tolerances(self.rtol, self.atol)
        self.budget = ValueBudget()  # the error values every pair's median/quantile keeps, in all
        self.agreements = [None] * len(matched)
        self.layouts = [None] * len(matched)
        self.shapes = [None] * len(matched)  # (A's sample shape, B's) where they cannot be compared
        self.move = None  # the layout note every moved pair took (None: not known yet; False: none or several)
        self.start = 0

    def update(self, values_a, values_b):
        n = None
        if self.move is None:  # the layout the two models differ by, from the pairs whose shapes say it
            notes = {aligned(values_a[i], values_b[j])[2] for i, j, _ in self.matched} - {None}
            self.move = notes.pop() if len(notes) == 1 else False
        for k, (i, j, name) in enumerate(self.matched):
            a, b, layout = aligned(values_a[i], values_b[j], self.move or None)
            n = len(a)
            if a.shape != b.shape:
                self.shapes[k] = (list(values_a[i].shape[1:]), list(values_b[j].shape[1:]))
                continue
            if self.agreements[k] is None:
                kind = StringAgreement if _is_string(a) or _is_string(b) else Agreement
                self.agreements[k] = self.tolerances.running(kind, (self.rows, *b.shape[1:]), name, self.budget)
                self.layouts[k] = layout
            self.agreements[k].update(a, b, self.start)
        self.start += n or 0

    def _passes(self, agreement, result):
        if isinstance(agreement, StringAgreement):
            return result["outside_tolerance"] == 0
        return self.criterion.passes(result)

    def pairs(self):
        records = []
        for k, (_, _, name) in enumerate(self.matched):
            record = {"path": name}
            if self.tolerances.custom:
                rtol, atol = self.tolerances.at(name)
                record.update({"error_stat": str(self.tolerances.stat), "rtol": rtol, "atol": atol})
            if self.shapes[k] is not None:
                record.update({"status": "shape", "shape_a": self.shapes[k][0], "shape_b": self.shapes[k][1]})
            else:
                result = self.agreements[k].result()
                worst = result.pop("worst")
                record.update({
                    "shape": list(self.agreements[k].shape[1:]),
                    "max_abs": result["max_abs_error"], "max_rel": result["max_rel_error"],
                    "mean_abs": result["mean_abs_error"], "cosine": result["cosine"],
                    "snr_db": result["snr_db"], "max_abs_b": result["max_abs_b"],
                    "outside_tolerance": result["outside_tolerance"],
                    "nonfinite_mismatches": result["nonfinite_mismatches"],
                    "worst_sample": worst["sample"] if worst else None,
                    "worst_position": worst["position"] if worst else None,
                    **({"stat_abs_error": result["stat_abs_error"], "stat_rel_error": result["stat_rel_error"]}
                       if "within_stat" in result else {}),
                    "status": "ok" if self._passes(self.agreements[k], result) else "differ",
                })
                if self.layouts[k] is not None:
                    record["layout"] = self.layouts[k]
            records.append(record)
        return records


class ComparisonSink:
    """The sink of a comparison in the dump's loop (runner.dump): each batch's values, A's
    `count` first and B's after, go to the comparison and to the writers of --save-a and
    --save-b (None where not asked), which also hear of the inputs skipped as bad."""

    def __init__(self, comparison, count, writers):
        self.comparison, self.count, self.writers = comparison, count, writers
        self.rows = 0

    def append(self, sources, arrays):
        values = (arrays[:self.count], arrays[self.count:])
        self.comparison.update(*values)
        self.rows += len(sources)
        for writer, side in zip(self.writers, values):
            if writer is not None:
                writer.append(sources, side)

    def skip(self, entries, rows):
        for writer in self.writers:
            if writer is not None:
                writer.skip(entries, rows)


GREEN, RED = "#2ca02c", "#d62728"


def node_data(result):
    """Model Explorer's node data for model B's graph (its GraphNodeData JSON: `results`
    keyed by tensor name, each `{"value": ...}`, and a colour `gradient`): the criterion's
    metric per pair, green where B agrees with A, red where it parts. Pairs whose metric is
    not finite (SNR of equal values) or whose shapes differ are left out."""
    metric = result["metric"].split(":")[0]
    key = {"snr": "snr_db", "cosine": "cosine"}.get(metric, "max_abs")
    results = {}
    for pair in result["pairs"]:
        value = pair.get(key)
        if value is not None and math.isfinite(value):
            results[pair["node_b"]] = {"value": value}
    low_is_good = key == "max_abs"
    return {"results": results,
            "gradient": [{"stop": 0, "bgColor": GREEN if low_is_good else RED},
                         {"stop": 1, "bgColor": RED if low_is_good else GREEN}]}
