"""`tensorprobe summary` and `tensorprobe diff`: every value checked against h5py reads and
NumPy computations written here, on real dumps made by the CLI and on small synthetic dumps
written with h5py for the NaN, tolerance and layout cases."""

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import error_line

BIN = Path(sys.executable).parent / "tensorprobe"


def run(*args):
    from tensorprobe.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def dumps(zoo, tmp_path_factory):
    """Real dumps with --all: the transfer model twice, and the same model with one kernel
    value of the nested layer vgg16/block2_conv1 changed."""
    import keras

    folder = tmp_path_factory.mktemp("dumps")
    model = keras.saving.load_model(zoo["transfer.keras"], compile=False)
    conv = model.get_layer("vgg16").get_layer("block2_conv1")
    kernel, bias = conv.get_weights()
    kernel[1, 1, 0, 0] += 0.5
    conv.set_weights([kernel, bias])
    model.save(folder / "changed.keras")
    paths = {}
    for name, model_path in (("golden", zoo["transfer.keras"]), ("again", zoo["transfer.keras"]),
                             ("changed", folder / "changed.keras")):
        paths[name] = folder / f"{name}.h5"
        r = run("dump", "-q", "-m", model_path, "--all", "-b", "3", "-o", paths[name], zoo["images7.npy"])
        assert r.exit_code == 0, r.stderr
    return paths


def model_order(zoo):
    """The datasets of `dump --all` on transfer.keras in the order the model computes them,
    from Keras' own layer lists: the nested base's layers, its output, then the head."""
    import keras

    model = keras.saving.load_model(zoo["transfer.keras"], compile=False)
    base = model.get_layer("vgg16")
    inner = [f"vgg16/{layer.name}" for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    head = [layer.name for layer in model.layers if layer is not base and not isinstance(layer, keras.layers.InputLayer)]
    return inner + ["vgg16/__output__"] + head


def read_all(path, group="activations"):
    found = {}
    with h5py.File(path, "r") as f:
        f[group].visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def write_dump(path, data, complete=True, sources=None, groups=None, attrs=None):
    """A small dump written with h5py, following the README's layout: `data` maps a dataset
    path under /activations to its array, in layer order; `groups` adds other top-level
    groups ({"gradients": {path: array}}), with the same orders."""
    rows = len(next(iter(data.values())))
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "tensorprobe", "format_version": 1, "model": "synthetic.keras",
                        "command": ["tensorprobe", "dump"], "samples": rows, "complete": complete,
                        **(attrs or {})})
        f.create_dataset("inputs/source", data=sources or [f"x.npy[{i}]" for i in range(rows)],
                         dtype=h5py.string_dtype("utf-8"))
        for group, arrays in {"activations": data, **(groups or {})}.items():
            for order, (name, array) in enumerate(arrays.items()):
                ds = f.create_dataset(f"{group}/{name}", data=array, chunks=(1,) + np.shape(array)[1:])
                ds.attrs["layer"] = name
                ds.attrs["order"] = list(data).index(name) if name in data else order
    return path


# ---------------------------------------------------------------- summary

def test_summary_of_a_complete_dump(zoo, dumps):
    golden = dumps["golden"]
    r = run("summary", "--json", golden)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    s = json.loads(r.stdout)
    sha = hashlib.sha256(zoo["transfer.keras"].read_bytes()).hexdigest()
    with h5py.File(golden, "r") as f:
        assert s["model"] == f.attrs["model"] == str(zoo["transfer.keras"])
        assert s["model_sha256"] == sha
        assert s["loader"] == f.attrs["loader"] and s["created"] == f.attrs["created"]
        assert s["command"] == list(f.attrs["command"])
        assert s["samples"] == 7 == len(np.load(zoo["images7.npy"]))
        assert s["complete"] is True and s["format"] == "tensorprobe" and s["format_version"] == 1
        assert set(s) == {"output", "inputs", "datasets", *f.attrs.keys()}
    assert s["inputs"] == [{"file": str(zoo["images7.npy"]), "rows": 7}]
    assert [d["path"] for d in s["datasets"]] == model_order(zoo)
    values = read_all(golden)
    for d in s["datasets"]:
        v = values[d["path"]].astype(np.float64)
        assert d["group"] == "activations" and d["name"] == d["path"]
        assert [d["samples"], *d["sample_shape"]] == list(v.shape)
        assert d["dtype"] == "float32" and d["mib"] == pytest.approx(v.size * 4 / 2**20)
        assert d["min"] == pytest.approx(v.min()) and d["max"] == pytest.approx(v.max())
        assert d["mean"] == pytest.approx(v.mean(), rel=1e-9, abs=1e-12)
        assert d["std"] == pytest.approx(v.std(), rel=1e-9, abs=1e-12)
        assert d["zeros_fraction"] == pytest.approx(np.mean(v == 0))
        assert d["nan_count"] == 0 and d["inf_count"] == 0


def test_summary_table(zoo, dumps):
    golden = dumps["golden"]
    r = run("summary", golden)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    with h5py.File(golden, "r") as f:
        command = shlex.join(f.attrs["command"])
        created = f.attrs["created"]
    provenance = dict(line.split(None, 1) for line in lines[1 : lines.index("")])
    assert lines[0] == str(golden)
    assert provenance["model"] == str(zoo["transfer.keras"])
    assert provenance["model_sha256"] == hashlib.sha256(zoo["transfer.keras"].read_bytes()).hexdigest()
    assert provenance["command"] == command and provenance["created"] == created
    assert provenance["inputs"] == f"{zoo['images7.npy']} (7 rows)"
    assert provenance["samples"] == "7" and provenance["complete"] == "yes"
    order = model_order(zoo)
    rows = [line.split() for line in lines if line.split() and line.split()[0] in order]
    assert [row[0] for row in rows] == order
    row = next(row for row in rows if row[0] == "vgg16/block2_conv1")
    v = read_all(golden)["vgg16/block2_conv1"].astype(np.float64)
    assert row[1:5] == ["(16,", "16,", "16)", "float32"]
    assert row[6:10] == [f"{v.min():.4g}", f"{v.max():.4g}", f"{v.mean():.4g}", f"{v.std():.4g}"]
    assert row[10] == f"{100 * np.mean(v == 0):.1f}%"


def test_dump_prints_its_summary_through_the_same_code(zoo, tmp_path):
    out = tmp_path / "acts.h5"
    r = run("dump", "-m", zoo["transfer.keras"], "-l", "vgg16", "-l", "block3_conv3", "-l", "3",
            "-o", out, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    s = run("summary", out)
    assert s.exit_code == 0, s.stderr
    table = s.stdout.split("\n\n", 1)[1]  # after the provenance
    assert r.stderr == table + f"wrote {out}\n"
    rows = [line.split()[0] for line in table.splitlines()[4:] if line.strip()]
    assert rows[:3] == ["vgg16/block3_conv3", "vgg16/__output__", "fc1"]
    assert rows[3:] == ["per-channel"]


def incomplete_copy(golden, path):
    """What an interrupted dump leaves: `complete` false, no `samples`, no statistics yet."""
    shutil.copy(golden, path)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
        del f.attrs["samples"]

        def strip(name, obj):
            if isinstance(obj, h5py.Dataset):
                for key in ("min", "max", "mean", "std", "zeros_fraction", "nan_count", "inf_count"):
                    del obj.attrs[key]

        f["activations"].visititems(strip)
    return path


def test_incomplete_dump_is_refused_then_read_with_allow_incomplete(zoo, dumps, tmp_path):
    partial = incomplete_copy(dumps["golden"], tmp_path / ".acts.h5.abc.partial")
    before = partial.read_bytes()
    for args in (["summary", partial], ["summary", "--json", partial], ["diff", dumps["golden"], partial],
                 ["diff", partial, dumps["golden"]]):
        r = run(*args)
        assert r.exit_code == 1, r.stderr
        line = error_line(r)
        assert str(partial) in line and "incomplete" in line and "--allow-incomplete" in line
        assert r.stdout == ""
    r = run("summary", "--allow-incomplete", partial)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == f"warning: '{partial}' is an incomplete dump, read because of --allow-incomplete\n"
    assert "  complete             NO: an incomplete dump" in r.stdout
    assert f"{partial}: 7 samples from {zoo['transfer.keras']} (INCOMPLETE)" in r.stdout
    s = json.loads(run("summary", "--allow-incomplete", "--json", partial).stdout)
    assert s["complete"] is False and "samples" not in s
    assert [d["path"] for d in s["datasets"]] == model_order(zoo)
    assert all("mean" not in d for d in s["datasets"])
    r = run("diff", "--allow-incomplete", "--json", dumps["golden"], partial)
    assert r.exit_code == 0, r.stdout
    d = json.loads(r.stdout)
    assert d["complete"] == {"a": True, "b": False} and d["match"] is True
    assert r.stderr.count("warning:") == 1
    assert partial.read_bytes() == before


def test_other_groups_and_per_channel_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    a = write_dump(tmp_path / "a.h5", {"dense": x, "out": x[:, :2]}, groups={"gradients": {"dense": g}})
    with h5py.File(a, "a") as f:
        f["activations/dense"].attrs["channel_mean"] = x.mean(axis=0)
        f["gradients/dense"].attrs["target"] = "top"
    r = run("summary", "--json", a)
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert [(d["group"], d["path"], d["name"]) for d in s["datasets"]] == [
        ("activations", "dense", "dense"), ("activations", "out", "out"), ("gradients", "dense", "gradients/dense")]
    assert s["datasets"][0]["channel_mean"] == pytest.approx(list(x.mean(axis=0)))
    assert s["datasets"][2]["target"] == "top"
    table = run("summary", a).stdout
    assert "gradients/dense" in table and "per-channel statistics" in table
    b = write_dump(tmp_path / "b.h5", {"dense": x, "out": x[:, :2]}, groups={"gradients": {"dense": g * 2}})
    r = run("diff", "--json", a, b)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["first_difference"] == "gradients/dense"
    assert d["datasets"][2]["max_abs_error"] == pytest.approx(np.abs(g).max())
    r = run("diff", "--json", "--only", "^gradients/", a, b)
    assert [x["name"] for x in json.loads(r.stdout)["datasets"]] == ["gradients/dense"]


# ---------------------------------------------------------------- diff on real dumps

def test_diff_of_identical_dumps(zoo, dumps):
    a, b = read_all(dumps["golden"]), read_all(dumps["again"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    r = run("diff", dumps["golden"], dumps["again"])
    assert r.exit_code == 0, r.stdout
    assert r.stderr == ""
    assert r.stdout.splitlines()[-1] == f"match: {len(a)} of {len(a)} datasets"
    d = json.loads(run("diff", "--json", dumps["golden"], dumps["again"]).stdout)
    assert d["match"] is True and d["first_difference"] is None and d["inputs"]["same"] is True
    assert [x["name"] for x in d["datasets"]] == model_order(zoo)
    assert all(x["status"] == "match" and x["max_abs_error"] == 0 and x["worst"] is None for x in d["datasets"])


def test_diff_names_the_first_layer_that_moved(zoo, dumps):
    golden, changed = read_all(dumps["golden"]), read_all(dumps["changed"])
    order = model_order(zoo)
    close = {k: np.allclose(golden[k], changed[k]) for k in order}
    assert [k for k in order if not close[k]][0] == "vgg16/block2_conv1"
    assert all(close[k] for k in order[: order.index("vgg16/block2_conv1")])

    r = run("diff", dumps["golden"], dumps["changed"])
    assert r.exit_code == 1
    assert r.stderr == ""
    a = golden["vgg16/block2_conv1"].astype(np.float64)
    b = changed["vgg16/block2_conv1"].astype(np.float64)
    err = np.abs(a - b)
    worst = np.unravel_index(np.argmax(err), err.shape)
    first_line = next(line for line in r.stdout.splitlines() if line.startswith("first difference:"))
    assert first_line.startswith(
        f"first difference: vgg16/block2_conv1 ({100 * np.mean(~np.isclose(a, b)):.3g}% of values outside "
        f"tolerance; worst at {worst[0]}, ({worst[1]}, {worst[2]}, {worst[3]}): {a[worst]:.4g} in A, {b[worst]:.4g} in B)")
    assert r.stdout.splitlines()[-1] == f"differ: {sum(not c for c in close.values())} of {len(order)} datasets differ"

    d = json.loads(run("diff", "--json", dumps["golden"], dumps["changed"]).stdout)
    assert d["match"] is False and d["first_difference"] == "vgg16/block2_conv1"
    rows = {x["name"]: x for x in d["datasets"]}
    assert {k for k, x in rows.items() if x["status"] == "match"} == {k for k in order if close[k]}
    x = rows["vgg16/block2_conv1"]
    assert x["status"] == "values" and x["shape_a"] == list(a.shape) and x["dtype_a"] == "float32"
    assert x["max_abs_error"] == pytest.approx(err.max(), rel=1e-12)
    nonzero = b != 0
    assert x["max_rel_error"] == pytest.approx((err[nonzero] / np.abs(b[nonzero])).max(), rel=1e-12)
    assert x["outside_tolerance"] == np.count_nonzero(~np.isclose(a, b, rtol=1e-5, atol=1e-8))
    assert x["outside_fraction"] == pytest.approx(x["outside_tolerance"] / a.size)
    assert x["worst"] == {"sample": int(worst[0]), "position": [int(i) for i in worst[1:]],
                          "a": pytest.approx(a[worst]), "b": pytest.approx(b[worst])}


def test_diff_reads_in_blocks_of_elements(dumps, monkeypatch):
    """With blocks of one element, no read takes more than one element, every element of
    every dataset is read once in each file, and the result is the same."""
    from tensorprobe import dumpdiff

    whole = json.loads(run("diff", "--json", dumps["golden"], dumps["changed"]).stdout)
    reads = []
    original = h5py.Dataset.__getitem__

    def recording(self, key):
        value = original(self, key)
        if self.name.startswith("/activations/"):
            reads.append((self.name, np.size(value), self.size))
        return value

    monkeypatch.setattr(dumpdiff, "BLOCK_BYTES", 1)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    blocked = json.loads(run("diff", "--json", dumps["golden"], dumps["changed"]).stdout)
    assert blocked == whole
    assert reads and all(size == 1 for _, size, _ in reads)
    per_dataset, sizes = {}, {}
    for name, size, total in reads:
        per_dataset[name] = per_dataset.get(name, 0) + size
        sizes[name] = total
    assert per_dataset == {name: 2 * total for name, total in sizes.items()}  # once in both files


def test_shape_mismatch_missing_datasets_and_different_inputs(zoo, tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    for out, layers, x in ((a, ["fc1", "gap"], "images7.npy"), (b, ["fc1", "bn"], "images7.npy"),
                           (c, ["fc1", "gap"], "input.npy")):
        args = [item for layer in layers for item in ("-l", layer)]
        r = run("dump", "-q", "-m", zoo["transfer.keras"], *args, "-o", out, zoo[x])
        assert r.exit_code == 0, r.stderr
    r = run("diff", "--json", a, b)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["only_in_a"] == ["gap"] and d["only_in_b"] == ["bn"]
    assert {x["name"]: x["status"] for x in d["datasets"]} == {"gap": "only_a", "fc1": "match", "bn": "only_b"}
    assert d["first_difference"] is None and d["match"] is False
    lines = run("diff", a, b).stdout.splitlines()
    assert "only in A: gap" in lines and "only in B: bn" in lines
    assert [line.split()[-1] for line in lines if line.startswith("  gap ") or line.startswith("  bn ")] == ["A", "B"]

    r = run("diff", "--json", a, c)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    with h5py.File(a, "r") as fa, h5py.File(c, "r") as fc:
        shapes = (list(fa["activations/fc1"].shape), list(fc["activations/fc1"].shape))
        sources = (fa["inputs/source"].asstr()[0], fc["inputs/source"].asstr()[0])
    assert shapes == ([7, 12], [4, 12])
    fc1 = next(x for x in d["datasets"] if x["name"] == "fc1")
    assert fc1["status"] == "shape" and (fc1["shape_a"], fc1["shape_b"]) == shapes
    assert d["first_difference"] == "gap"  # gap comes before fc1 in the model
    assert [x["name"] for x in d["datasets"]] == ["gap", "fc1"]
    assert d["inputs"] == {"same": False, "rows_a": 7, "rows_b": 4,
                           "first_difference": {"row": 0, "a": sources[0], "b": sources[1]}}
    text = run("diff", a, c).stdout
    assert f"note: the inputs differ: row 0 is {sources[0]!r} in A, {sources[1]!r} in B" in text


def test_different_input_sources_alone_do_not_fail(tmp_path):
    x = np.arange(6.0).reshape(3, 2)
    fa = write_dump(tmp_path / "a.h5", {"d": x}, sources=["ci/batch.npy[0]", "ci/batch.npy[1]", "ci/batch.npy[2]"])
    fb = write_dump(tmp_path / "b.h5", {"d": x.copy()}, sources=["ci/batch.npy[0]", "/home/me/batch.npy[1]", "x"])
    r = run("diff", fa, fb)
    assert r.exit_code == 0, r.stdout
    assert ("note: the inputs differ: row 1 is 'ci/batch.npy[1]' in A, '/home/me/batch.npy[1]' in B "
            "(/inputs/source; the values were compared anyway)") in r.stdout.splitlines()
    d = json.loads(run("diff", "--json", fa, fb).stdout)
    assert d["match"] is True and d["inputs"] == {
        "same": False, "rows_a": 3, "rows_b": 3,
        "first_difference": {"row": 1, "a": "ci/batch.npy[1]", "b": "/home/me/batch.npy[1]"}}


def test_only_selects_datasets_by_path(dumps):
    r = run("diff", "--json", "--only", "^vgg16/block1_", dumps["golden"], dumps["changed"])
    assert r.exit_code == 0, r.stdout
    d = json.loads(r.stdout)
    assert [x["name"] for x in d["datasets"]] == ["vgg16/block1_conv1", "vgg16/block1_conv2", "vgg16/block1_pool"]
    r = run("diff", "--json", "--only", "conv1$", dumps["golden"], dumps["changed"])
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert [x["name"] for x in d["datasets"]] == ["vgg16/block1_conv1", "vgg16/block2_conv1", "vgg16/block3_conv1"]
    assert d["first_difference"] == "vgg16/block2_conv1"


# ---------------------------------------------------------------- tolerances and NaN

@pytest.mark.parametrize("a,b,options,status", [
    (1.5, 1.0, ["--rtol", "0", "--atol", "0.5"], 0),  # |a-b| = atol: inside
    (1.5, 1.0, ["--rtol", "0", "--atol", "0.49"], 1),
    (3.0, 2.0, ["--atol", "0", "--rtol", "0.5"], 0),  # |a-b| = rtol * |b|
    (3.0, 2.0, ["--atol", "0", "--rtol", "0.49"], 1),
    (2.0, 3.0, ["--atol", "0", "--rtol", "0.34"], 0),  # b is the reference: 1 <= 0.34 * 3
    (3.0, 2.0, ["--atol", "0", "--rtol", "0.34"], 1),  # ... and 1 > 0.34 * 2
    (1.5, 1.0, ["--atol", "0.25", "--rtol", "0.25"], 0),  # both: 0.5 <= 0.25 + 0.25 * 1
    (1.5, 1.0, ["--atol", "0.25", "--rtol", "0.24"], 1),
    (1 + 1e-6, 1.0, [], 0),  # defaults rtol 1e-5, atol 1e-8
    (1 + 2e-5, 1.0, [], 1),
    (1e-9, 0.0, [], 0),
    (1e-7, 0.0, [], 1),
])
def test_tolerance_boundaries(tmp_path, a, b, options, status):
    opts = dict(zip(options[::2], map(float, options[1::2])))
    expected = np.isclose(a, b, rtol=opts.get("--rtol", 1e-5), atol=opts.get("--atol", 1e-8))
    assert (0 if expected else 1) == status
    fa = write_dump(tmp_path / "a.h5", {"x": np.array([[0.0, a], [7.0, 7.0]])})
    fb = write_dump(tmp_path / "b.h5", {"x": np.array([[0.0, b], [7.0, 7.0]])})
    r = run("diff", "--json", *options, fa, fb)
    assert r.exit_code == status, r.stdout
    x = json.loads(r.stdout)["datasets"][0]
    assert x["outside_tolerance"] == int(not expected)
    assert x["max_abs_error"] == pytest.approx(abs(a - b))
    assert x["worst"] == {"sample": 0, "position": [1], "a": a, "b": b}


@pytest.mark.parametrize("options,text", [
    (["--atol", "-1"], "--atol"), (["--rtol", "nan"], "--rtol"), (["--rtol", "x"], "--rtol"),
    (["--only", "["], "--only '['"), (["--only", "zzz"], "--only 'zzz' matches no dataset"),
])
def test_bad_diff_options_are_usage_errors(tmp_path, options, text):
    fa = write_dump(tmp_path / "a.h5", {"x": np.zeros((2, 2))})
    r = run("diff", *options, fa, fa)
    assert r.exit_code == 2
    assert text in error_line(r)
    assert r.stdout == ""


def test_nan_and_infinity(tmp_path):
    nan, inf = np.nan, np.inf
    a = np.array([[nan, 1.0, inf, -inf, nan, 2.0, 5.0, 1.0]])
    b = np.array([[nan, 1.0, inf, inf, 0.0, nan, 3.0, 1.0]])
    # independently: numpy's rule with equal_nan; the worst is the first non-finite mismatch
    expected_outside = np.count_nonzero(~np.isclose(a, b, equal_nan=True))
    nonfinite = ~(np.isfinite(a) & np.isfinite(b)) & ~((a == b) | (np.isnan(a) & np.isnan(b)))
    first = int(np.flatnonzero(nonfinite)[0])
    fa = write_dump(tmp_path / "a.h5", {"x": a})
    fb = write_dump(tmp_path / "b.h5", {"x": b})
    r = run("diff", "--json", fa, fb)
    assert r.exit_code == 1
    x = json.loads(r.stdout)["datasets"][0]
    assert (expected_outside, int(nonfinite.sum()), first) == (4, 3, 3)
    assert x["outside_tolerance"] == expected_outside and x["nonfinite_mismatches"] == nonfinite.sum()
    assert x["worst"] == {"sample": 0, "position": [first], "a": None, "b": None}  # -inf, inf: no JSON number
    finite = np.isfinite(a) & np.isfinite(b)
    assert x["max_abs_error"] == np.abs(a[finite] - b[finite]).max() == 2.0
    assert x["max_rel_error"] == pytest.approx(2.0 / 3.0)
    table = run("diff", fa, fb).stdout
    assert "worst at 0, (3,): -inf in A, inf in B" in table

    # NaN at the same places on both sides, same infinities: a match
    same = np.array([[nan, inf, -inf, 1.0]])
    r = run("diff", write_dump(tmp_path / "c.h5", {"x": same}), write_dump(tmp_path / "d.h5", {"x": same.copy()}))
    assert r.exit_code == 0, r.stdout
    # NaN at different places: no match
    moved = np.array([[1.0, inf, -inf, nan]])
    r = run("diff", "--json", tmp_path / "c.h5", write_dump(tmp_path / "e.h5", {"x": moved}))
    assert r.exit_code == 1
    assert json.loads(r.stdout)["datasets"][0]["nonfinite_mismatches"] == np.count_nonzero(np.isnan(same) ^ np.isnan(moved))


def test_worst_element_across_blocks(tmp_path, monkeypatch):
    """Ties keep the first element; a non-finite mismatch in a later block beats any error."""
    from tensorprobe import dumpdiff

    a = np.zeros((10, 3))
    b = a.copy()
    b[2, 1] = b[7, 0] = 0.5
    b[8, 2] = 0.25
    c = b.copy()
    c[6, 2] = np.nan
    fa = write_dump(tmp_path / "a.h5", {"x": a})
    fb = write_dump(tmp_path / "b.h5", {"x": b})
    fc = write_dump(tmp_path / "c.h5", {"x": c})
    monkeypatch.setattr(dumpdiff, "BLOCK_BYTES", 2 * 3 * 8)  # two rows a block
    for other, values in ((fb, b), (fc, c)):
        x = json.loads(run("diff", "--json", fa, other).stdout)["datasets"][0]
        nonfinite = np.isnan(values)
        flat = np.flatnonzero(nonfinite)[0] if nonfinite.any() else np.argmax(np.abs(np.nan_to_num(values)))
        sample, position = np.unravel_index(flat, a.shape)
        assert x["worst"]["sample"] == sample and x["worst"]["position"] == [position]
        assert x["max_abs_error"] == np.nanmax(np.abs(values))
    assert (sample, position) == (6, 2)


def test_dtype_difference_counts(tmp_path):
    x = np.arange(6.0).reshape(2, 3)
    fa = write_dump(tmp_path / "a.h5", {"x": x.astype(np.float32)})
    fb = write_dump(tmp_path / "b.h5", {"x": x.astype(np.float64)})
    r = run("diff", "--json", fa, fb)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["first_difference"] == "x"
    row = d["datasets"][0]
    assert row["status"] == "dtype" and (row["dtype_a"], row["dtype_b"]) == ("float32", "float64")
    assert row["outside_tolerance"] == 0 and row["max_abs_error"] == 0


# ---------------------------------------------------------------- bad files

def bad_files(folder, golden):
    (folder / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.h5").write_bytes(b"")
    data = golden.read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(folder / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    with h5py.File(folder / "newer.h5", "w") as f:
        f.attrs.update({"format": "tensorprobe", "format_version": 99, "complete": True})
    incomplete_copy(golden, folder / "partial.h5")
    shutil.copy(golden, folder / "good.h5")
    (folder / "folder").mkdir()


BAD = [
    ("random.h5", 1, "is not an HDF5 file"),
    ("empty.h5", 1, "is not an HDF5 file"),
    ("truncated.h5", 1, "damaged or truncated"),
    ("other.h5", 1, "not a tensorprobe dump (no 'format' attribute)"),
    ("newer.h5", 1, "format_version 99"),
    ("partial.h5", 1, "incomplete dump"),
    ("missing.h5", 2, "does not exist"),
    ("folder", 2, "is a directory"),
]


@pytest.mark.parametrize("command", ["summary", "summary-json", "diff-a", "diff-b"])
@pytest.mark.parametrize("name,status,text", BAD, ids=[b[0] for b in BAD])
def test_bad_file_gets_one_error_line_and_changes_nothing(dumps, tmp_path, command, name, status, text):
    bad_files(tmp_path, dumps["golden"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    bad, good = tmp_path / name, tmp_path / "good.h5"
    args = {"summary": ["summary", bad], "summary-json": ["summary", "--json", bad],
            "diff-a": ["diff", bad, good], "diff-b": ["diff", good, bad]}[command]
    r = run(*args)
    assert r.exit_code == status, r.stdout + r.stderr
    line = error_line(r)
    assert text in line and name in line
    assert r.stdout == ""
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "random.h5").write_bytes(b"not hdf5 at all")
    r = subprocess.run([BIN, "--debug", "summary", tmp_path / "random.h5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "DumpReadError" in r.stderr and "random.h5" in r.stderr
