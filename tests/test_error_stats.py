"""--error-stat and per-layer --rtol/--atol GLOB=VALUE for `diff` and `compare` (and the API):
every statistic recomputed here with NumPy, by Polygraphy's definition (the statistic of |a - b|
<= atol, or that of |a - b| / |b|, a 0 in b counted as float64's epsilon, <= rtol)."""

import json

import numpy as np
import pytest

import tensorprobe
from conftest import error_line
from test_summary_diff import run, write_dump

EPS = np.finfo(np.float64).eps


def numpy_stat(kind, values, q=None):
    return {"max": np.max, "mean": np.mean, "median": np.median,
            "quantile": lambda v: np.quantile(v, q)}[kind](values)


def errors_of(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    err = np.abs(a - b)
    return err, err / np.where(b == 0, EPS, np.abs(b))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two dumps: `big` differs a lot in a few elements (fails max, passes median), `small`
    by a little everywhere, `zero` where b has zeros."""
    folder = tmp_path_factory.mktemp("stats")
    rng = np.random.default_rng(3)
    big_b = rng.normal(size=(4, 50)).astype(np.float32)
    big_a = big_b + np.float32(1e-7)
    big_a[1, 7] += 5.0
    big_a[2, 9] -= 3.0
    small_b = rng.normal(size=(4, 3, 5)).astype(np.float32)
    small_a = small_b * np.float32(1.001)
    zero_b = np.array([[0.0, 1.0, 2.0], [0.0, -1.0, 4.0], [3.0, 0.0, 0.5], [1.0, 2.0, -2.0]], np.float32)
    zero_a = zero_b + np.float32(1e-3)
    a = write_dump(folder / "a.h5", {"block/big": big_a, "block/small": small_a, "zero": zero_a})
    b = write_dump(folder / "b.h5", {"block/big": big_b, "block/small": small_b, "zero": zero_b})
    return a, b, {"block/big": (big_a, big_b), "block/small": (small_a, small_b), "zero": (zero_a, zero_b)}


@pytest.mark.parametrize("stat", ["max", "mean", "median", "quantile:0.9"])
def test_diff_statistics_against_numpy(pair, stat):
    a, b, data = pair
    r = run("diff", "--json", "--error-stat", stat, "--atol", "1e-3", "--rtol", "1e-2", a, b)
    assert r.exit_code in (0, 1) and r.stdout, (r.output, r.stderr, r.exit_code)
    d = json.loads(r.stdout)
    kind, _, q = stat.partition(":")
    assert d["error_stat"] == stat and d["rtol_rules"] == [] and d["atol_rules"] == []
    expected_differ = []
    for row in d["datasets"]:
        err, rel = errors_of(*data[row["name"]])
        abs_stat, rel_stat = (numpy_stat(kind, v, float(q) if q else None) for v in (err, rel))
        assert row["error_stat"] == stat and row["rtol"] == 1e-2 and row["atol"] == 1e-3
        assert row["stat_abs_error"] == pytest.approx(abs_stat, rel=1e-12, abs=1e-300)
        assert row["stat_rel_error"] == pytest.approx(rel_stat, rel=1e-12, abs=1e-300)
        within = abs_stat <= 1e-3 or rel_stat <= 1e-2
        assert row["status"] == ("match" if within else "values")
        if not within:
            expected_differ.append(row["name"])
        # the element-wise count stays what numpy.isclose says
        assert row["outside_tolerance"] == int((~np.isclose(*[np.float64(x) for x in data[row["name"]]],
                                                             rtol=1e-2, atol=1e-3)).sum())
    assert r.exit_code == (1 if expected_differ else 0)
    assert d["first_difference"] == (expected_differ[0] if expected_differ else None)


def test_median_forgives_a_few_outliers_that_max_refuses(pair):
    a, b, _ = pair
    assert json.loads(run("diff", "--json", "--only", "big", "--error-stat", "median", "--atol", "1e-5",
                          a, b).stdout)["match"] is True
    r = run("diff", "--json", "--only", "big", "--error-stat", "max", "--atol", "1e-5", a, b)
    assert r.exit_code == 1 and json.loads(r.stdout)["first_difference"] == "block/big"
    r = run("diff", "--only", "big", a, b)  # element-wise, as before
    assert r.exit_code == 1


def test_per_dataset_tolerances_first_match_wins(pair):
    a, b, data = pair
    r = run("diff", "--json", "--atol", "block/big=10", "--atol", "block/*=1e-9", "--atol", "1e-2",
            "--rtol", "0", a, b)
    d = json.loads(r.stdout)
    applied = {row["name"]: (row["rtol"], row["atol"], row["error_stat"], row["status"]) for row in d["datasets"]}
    for name, (rtol, atol, _, status) in applied.items():
        x, y = (np.float64(v) for v in data[name])
        assert status == ("match" if np.allclose(x, y, rtol=rtol, atol=atol) else "values")
    assert {n: v[:3] for n, v in applied.items()} == {
        "block/big": (0.0, 10.0, "elemwise"), "block/small": (0.0, 1e-9, "elemwise"), "zero": (0.0, 1e-2, "elemwise")}
    assert d["atol_rules"] == ["block/big=10", "block/*=1e-09"] and d["atol"] == 1e-2 and d["rtol"] == 0
    assert d["first_difference"] == "block/small" and r.exit_code == 1
    api = tensorprobe.diff(a, b, atol={"block/big": 10, "block/*": 1e-9, "": 1e-2}, rtol=0)
    assert api["datasets"] == d["datasets"]


def test_diff_without_the_new_options_is_unchanged(pair):
    a, b, _ = pair
    d = json.loads(run("diff", "--json", a, b).stdout)
    assert "error_stat" not in d and all("error_stat" not in row and "rtol" not in row for row in d["datasets"])
    assert (d["rtol"], d["atol"]) == (1e-5, 1e-8)


@pytest.mark.parametrize("args, message", [
    (["--error-stat", "p99"], "error: --error-stat 'p99': expected elemwise, max, mean, median or quantile:Q"),
    (["--error-stat", "quantile:1.5"], "error: --error-stat 'quantile:1.5': the quantile lies in [0, 1]"),
    (["--error-stat", "median:0.5"], "error: --error-stat 'median:0.5': expected elemwise, max, mean, median"),
    (["--atol", "dense=abc"], "error: --atol 'abc': expected a number or GLOB=NUMBER"),
    (["--atol", "=1e-3"], "error: --atol '=1e-3': the glob before '=' is empty"),
    (["--atol", "dense=-1"], "error: --atol -1.0: expected a finite number >= 0"),
    (["--rtol", "1e-3", "--rtol", "1e-4"], "error: --rtol has two defaults (0.001 and 0.0001): give one plain"),
])
def test_bad_values_are_one_error_line(pair, args, message):
    a, b, _ = pair
    r = run("diff", *args, a, b)
    assert r.exit_code == 2
    assert error_line(r).startswith(message)


# ---------------------------------------------------------------- compare

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("stats_models")
    L = keras.layers
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu", name="d1"), L.Dense(3, name="d2")])
    model.save(folder / "a.keras")
    kernel = model.get_layer("d2").kernel
    kernel.assign(kernel.numpy() * np.float32(1.01))
    model.save(folder / "b.keras")
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return folder / "a.keras", folder / "b.keras", folder / "x.npy", x


def layer_values(keras_model, path, x):
    import keras

    m = keras_model(str(path))
    return {name: np.asarray(keras.Model(m.inputs, m.get_layer(name).output)(x)) for name in ("d1", "d2")}


@pytest.mark.parametrize("stat", ["max", "mean", "median", "quantile:0.25"])
def test_compare_statistics_against_keras_and_numpy(models, keras_model, cli, stat):
    path_a, path_b, x_path, x = models
    va, vb = layer_values(keras_model, path_a, x), layer_values(keras_model, path_b, x)
    r = cli("compare", path_a, path_b, x_path, "--json", "--error-stat", stat, "--atol", "d2=1e-3",
            "--atol", "1e-6", "--rtol", "0")
    d = json.loads(r.stdout)
    kind, _, q = stat.partition(":")
    assert d["metric"] == "allclose" and d["error_stat"] == stat and d["atol_rules"] == ["d2=0.001"]
    statuses = []
    for record in d["pairs"]:
        err, rel = errors_of(va[record["path"]], vb[record["path"]])
        abs_stat, rel_stat = (numpy_stat(kind, v, float(q) if q else None) for v in (err, rel))
        atol = 1e-3 if record["path"] == "d2" else 1e-6
        assert (record["error_stat"], record["rtol"], record["atol"]) == (stat, 0.0, atol)
        assert record["stat_abs_error"] == pytest.approx(abs_stat, rel=1e-5, abs=1e-9)
        assert record["stat_rel_error"] == pytest.approx(rel_stat, rel=1e-5, abs=1e-9)
        statuses.append("ok" if abs_stat <= atol or rel_stat <= 0 else "differ")
    assert [p["status"] for p in d["pairs"]] == statuses
    assert d["match"] is ("differ" not in statuses) and r.exit_code == (0 if d["match"] else 1)
    api = tensorprobe.compare(path_a, path_b, x, error_stat=stat, atol=["d2=1e-3", 1e-6], rtol=0)
    assert [p["status"] for p in api["pairs"]] == statuses
    assert [p["stat_abs_error"] for p in api["pairs"]] == [p["stat_abs_error"] for p in d["pairs"]]


def test_compare_per_layer_atol_decides_the_first_divergence(models, keras_model, cli):
    path_a, path_b, x_path, x = models
    va, vb = layer_values(keras_model, path_a, x), layer_values(keras_model, path_b, x)
    worst = float(np.abs(va["d2"].astype(np.float64) - vb["d2"]).max())
    r = cli("compare", path_a, path_b, x_path, "--json", "--atol", f"d2={worst * 2}", "--rtol", "0")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["match"] is True and d["error_stat"] == "elemwise"
    r = cli("compare", path_a, path_b, x_path, "--json", "--atol", f"d2={worst / 2}", "--rtol", "0")
    assert r.exit_code == 1 and json.loads(r.stdout)["first_divergence"] == "d2"


def test_compare_error_stat_conflicts_with_another_metric(models, cli):
    path_a, path_b, x_path, _ = models
    r = cli("compare", path_a, path_b, x_path, "--metric", "snr:30", "--error-stat", "mean")
    assert r.exit_code == 2
    assert error_line(r) == ("error: --error-stat sets what the allclose rule's tolerances apply to, "
                             "--metric 'snr:30' another rule: give one")


def test_median_refuses_more_values_than_it_may_keep(pair, monkeypatch):
    from tensorprobe import dumpdiff

    a, b, _ = pair
    monkeypatch.setattr(dumpdiff, "STAT_ELEMENTS", 100)
    r = run("diff", "--error-stat", "median", "--only", "big", a, b)
    assert r.exit_code == 1
    assert error_line(r) == ("error: --error-stat median keeps every error value to be exact, and 'block/big' "
                             "passes the 100 values it may keep in all: compare fewer inputs or layers, or use "
                             "max or mean (which keep none)")
