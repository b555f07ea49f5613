"""Hostile and doctored files on the reading side: dumps whose datasets live in other files,
statistics that are not numbers, special files, escape sequences in names, patterns that make
a backtracking regex engine run for ever, samples too large to hold, pictures too large to draw.

Crafted with h5py in the test (no TensorFlow) except the `layers` table cases, which need a
Keras model.
"""

import json
import os
import re
import time

import h5py
import numpy as np
import pytest

from conftest import error_line, run_on_terminal, screen_lines
from test_summary_diff import run, write_dump


def shard_pair(folder, data):
    """Two shard files of one job (rows split 2/2), with the statistics a dump writes."""
    from tensorprobe import store
    from tensorprobe.stats import RunningStats

    rows = len(next(iter(data.values())))
    half = rows // 2
    paths = []
    for k, (low, high) in enumerate(((0, half), (half, rows))):
        path = write_dump(folder / f"s{k}.h5", {n: a[low:high] for n, a in data.items()},
                          sources=[f"x.npy[{i}]" for i in range(low, high)],
                          attrs={"shard": f"{k}/2", "shard_rows": [low, high], "total_rows": rows,
                                 "input_fingerprint": "i" * 64, "options_fingerprint": "o" * 64})
        with h5py.File(path, "r+") as f:
            for name in data:
                stats = RunningStats()
                stats.update(f["activations"][name][()])
                store.write_stats(f["activations"][name], stats)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- values kept in other files

def test_external_storage_is_refused_by_every_reader(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    good = write_dump(tmp_path / "good.h5", {"fc": np.zeros((4, 8), np.uint8)})
    bad = tmp_path / "bad.h5"
    write_dump(bad, {"fc": np.zeros((4, 8), np.uint8)})
    with h5py.File(bad, "r+") as f:
        attrs = dict(f["activations/fc"].attrs)
        del f["activations/fc"]
        ds = f.create_dataset("activations/fc", shape=(4, 8), dtype="u1", external=[(str(secret), 0, 32)])
        ds.attrs.update(attrs)
        assert f["activations/fc"][0, :4].tobytes() == b"root"  # HDF5 itself would read the file
    out = tmp_path / "p.png"
    for command in (["summary", bad], ["summary", "--json", bad], ["diff", bad, good], ["diff", good, bad],
                    ["plot", bad, "-l", "fc", "-o", out], ["plot", bad, "-l", "fc", "--hist", "-o", out]):
        r = run(*command)
        assert r.exit_code == 1, (command, r.stdout)
        assert error_line(r) == (f"error: '{bad}': dataset /activations/fc keeps its values in another file "
                                 f"('{secret}', HDF5 external storage); a dump never does")
        assert r.stdout == "" and not out.exists()


def test_virtual_dataset_over_a_file_that_is_no_recorded_shard_is_refused(tmp_path):
    other = write_dump(tmp_path / "other.h5", {"fc": np.ones((4, 8), np.float32)})
    bad = write_dump(tmp_path / "bad.h5", {"fc": np.zeros((4, 8), np.float32)})
    with h5py.File(bad, "r+") as f:
        del f["activations/fc"]
        layout = h5py.VirtualLayout(shape=(4, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(other.name, "/activations/fc", shape=(4, 8))
        f.create_virtual_dataset("activations/fc", layout).attrs.update({"layer": "fc", "order": 0})
        f.attrs["merge_mode"] = "virtual"
        f.attrs["merged_from"] = ["s0.h5"]  # the shards it claims; other.h5 is none of them
    r = run("summary", bad)
    assert error_line(r) == (f"error: '{bad}': dataset /activations/fc reads /activations/fc of 'other.h5', "
                             "which is not one of the shards this merged dump records (merged_from)")
    assert r.exit_code == 1


def test_a_real_virtual_merge_still_reads(tmp_path):
    data = {"fc": np.arange(32, dtype=np.float32).reshape(4, 8)}
    s0, s1 = shard_pair(tmp_path, data)
    r = run("merge", s0, s1, "-o", tmp_path / "m.h5")
    assert r.exit_code == 0, r.stderr
    r = run("summary", "--json", tmp_path / "m.h5")
    assert r.exit_code == 0, r.stderr
    (fc,) = json.loads(r.stdout)["datasets"]
    assert fc["max"] == data["fc"].max() and fc["mean"] == pytest.approx(data["fc"].mean())


# ---------------------------------------------------------------- doctored attributes

@pytest.mark.parametrize("key, value, expected", [
    ("min", "abc", "min = 'abc', not a number"),
    ("nan_count", -1, "nan_count = -1, not a count"),
    ("mean", True, "mean = True, not a number"),
    ("channel_mean", [1.0], "channel_mean = [1.0], not 8 numbers, one a channel"),
    ("channel_max", ["a"] * 8, "channel_max = ['a', 'a', 'a', 'a', 'a', 'a', 'a', 'a'], not 8 numbers, one a channel"),
])
def test_doctored_statistics_are_refused_by_summary_and_merge(tmp_path, key, value, expected):
    s0, s1 = shard_pair(tmp_path, {"fc": np.random.default_rng(0).normal(size=(4, 8))})
    with h5py.File(s1, "r+") as f:
        f["activations/fc"].attrs[key] = value
    line = f"error: '{s1}' is a damaged dump: dataset /activations/fc has statistics attribute {expected}"
    for command in (["summary", s1], ["summary", "--json", s1], ["merge", s0, s1, "-o", tmp_path / "m.h5"],
                    ["merge", "--copy", s0, s1, "-o", tmp_path / "m.h5"]):
        r = run(*command)
        assert (r.exit_code, error_line(r)) == (1, line), command
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("doctor, line", [
    (lambda f: f.attrs.__setitem__("shard", 3), "error: '{s1}': its 'shard' attribute is 3, not K/N"),
    (lambda f: f["activations/fc"].attrs.__delitem__("nan_count"),
     "error: '{s1}': the statistics of activations/fc cannot be merged ('nan_count')"),
])
def test_doctored_shard_attributes_are_one_merge_error(tmp_path, doctor, line):
    s0, s1 = shard_pair(tmp_path, {"fc": np.ones((4, 8))})
    with h5py.File(s1, "r+") as f:
        doctor(f)
    for copy in ([], ["--copy"]):
        r = run("merge", *copy, s0, s1, "-o", tmp_path / "m.h5")
        assert (r.exit_code, error_line(r)) == (1, line.format(s1=s1))
    assert not (tmp_path / "m.h5").exists()


def test_total_rows_that_is_no_number_is_one_merge_error(tmp_path):
    s0, s1 = shard_pair(tmp_path, {"fc": np.ones((4, 8))})
    for path in (s0, s1):
        with h5py.File(path, "r+") as f:
            f.attrs["total_rows"] = "abc"
    r = run("merge", s0, s1, "-o", tmp_path / "m.h5")
    assert (r.exit_code, error_line(r)) == (1, f"error: '{s0}' is a damaged dump: its attribute total_rows is 'abc', "
                                               "not a number of rows")


def test_integer_inputs_source_is_refused_by_every_reader(tmp_path):
    bad = write_dump(tmp_path / "bad.h5", {"fc": np.ones((4, 8))})
    with h5py.File(bad, "r+") as f:
        del f["inputs/source"]
        f["inputs/source"] = np.arange(4)
    line = f"error: '{bad}' is a damaged dump: /inputs/source is not a list of strings"
    for command in (["summary", bad], ["diff", bad, bad], ["plot", bad, "-l", "fc", "-o", tmp_path / "p.png"]):
        r = run(*command)
        assert (r.exit_code, error_line(r)) == (1, line), command


# ---------------------------------------------------------------- special files

def test_a_fifo_or_a_device_is_no_dump_and_never_blocks(tmp_path):
    fifo = tmp_path / "acts.h5"
    os.mkfifo(fifo)
    started = time.monotonic()
    for path, kind in ((fifo, "a named pipe"), ("/dev/zero", "a character device")):  # a folder: click refuses
        for command in (["summary", path], ["diff", path, path], ["plot", path, "-l", "x", "-o", tmp_path / "p.png"]):
            r = run(*command)
            line = f"error: '{path}': not a regular file ({kind}); a dump is an HDF5 file"
            assert (r.exit_code, error_line(r)) == (1, line), command
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------- escape sequences

def test_control_characters_in_a_dump_are_shown_escaped(tmp_path):
    forged = "evil\x1b[31mRED\nforged line"
    path = write_dump(tmp_path / "a.h5", {"fc\x1b[2Jx": np.ones((2, 3))}, attrs={"model": forged, "note\nkey": "x\ty"})
    r = run("summary", path)
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\t" not in r.stdout
    lines = r.stdout.splitlines()
    assert "  model" in lines[1] and lines[1].split(None, 1)[1] == "evil\\x1b[31mRED\\nforged line"
    assert not any(line.startswith("forged line") for line in lines)  # no line of its own
    assert any(line.split()[:2] == ["note\\nkey", "x\\ty"] for line in lines)
    assert any(line.split()[0] == "fc\\x1b[2Jx" for line in lines if line.strip())
    assert json.loads(run("summary", "--json", path).stdout)["model"] == forged  # JSON keeps the value exactly


def test_control_characters_in_an_error_line_are_escaped(tmp_path):
    missing = tmp_path / "no\x1b[31mfile.h5"
    r = run("summary", missing)
    line = error_line(r)
    assert "\x1b" not in r.stderr and "no\\x1b[31mfile.h5" in line


# ---------------------------------------------------------------- regular expressions

def test_a_nested_quantifier_answers_at_once(tmp_path):
    """Python's backtracking `re` takes 2**40 steps for this pattern on a 40-letter name that
    ends in a character it cannot match; RE2 answers in linear time."""
    name = "a" * 40 + "-x"
    a = write_dump(tmp_path / "a.h5", {name: np.ones((2, 3))})
    started = time.monotonic()
    r = run("diff", a, a, "--only", r"^(\w+/?)+$")
    assert time.monotonic() - started < 10
    assert (r.exit_code, error_line(r)) == (2, f"error: --only '^(\\w+/?)+$' matches no dataset in '{a}' or '{a}'")
    r = run("diff", a, a, "--only", r"^(\w+/?)+-x$", "--json")
    assert r.exit_code == 0 and [d["name"] for d in json.loads(r.stdout)["datasets"]] == [name]


def test_a_pattern_re2_lacks_is_one_usage_error(tmp_path):
    a = write_dump(tmp_path / "a.h5", {"fc": np.ones((2, 3))})
    r = run("diff", a, a, "--only", r"(f)\1")
    assert r.exit_code == 2
    assert error_line(r) == ("error: --only '(f)\\1': not a valid regular expression (invalid escape sequence: "
                             "\\1); RE2 is used, which has no back-references or look-around")


# ---------------------------------------------------------------- bounded memory

def test_diff_reads_one_large_sample_in_blocks_of_elements(tmp_path, monkeypatch):
    from tensorprobe import dumpdiff

    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 6, 5, 7)).astype(np.float32)
    b = a.copy()
    b[1, 4, 2, 6] += 0.5  # the worst element, in the last block of a sample
    b[0, 0, 0, 0] += 0.25
    pa, pb = write_dump(tmp_path / "a.h5", {"x": a}), write_dump(tmp_path / "b.h5", {"x": b})
    whole = json.loads(run("diff", "--json", pa, pb).stdout)
    reads = []
    original = h5py.Dataset.__getitem__

    def recording(self, key):
        value = original(self, key)
        if self.name.startswith("/activations/"):
            reads.append(np.size(value))
        return value

    monkeypatch.setattr(dumpdiff, "BLOCK_BYTES", 8 * 12)  # 12 elements a block; one sample holds 210
    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    blocked = json.loads(run("diff", "--json", pa, pb).stdout)
    assert blocked == whole
    assert max(reads) <= 12 and sum(reads) == 2 * a.size
    (x,) = blocked["datasets"]
    assert x["worst"] == {"sample": 1, "position": [4, 2, 6], "a": float(a[1, 4, 2, 6]), "b": float(b[1, 4, 2, 6])}
    assert x["max_abs_error"] == float(np.abs(a.astype(np.float64) - b).max())
    assert x["outside_tolerance"] == int((~np.isclose(a.astype(np.float64), b.astype(np.float64),
                                                      rtol=1e-5, atol=1e-8)).sum())


def test_plot_hist_streams_one_large_sample_in_blocks(tmp_path, monkeypatch):
    from tensorprobe.plot import dumpfile, histogram

    a = np.random.default_rng(4).normal(size=(1, 50, 40)).astype(np.float32)
    path = write_dump(tmp_path / "a.h5", {"x": a})
    monkeypatch.setattr(dumpfile, "READ_BYTES", 4 * 100)  # 100 values a block, one sample holds 2000
    sizes = []
    with h5py.File(path, "r") as f:
        for block in dumpfile.stream(f["activations/x"]):
            sizes.append(block.size)
        h = histogram.histogram(lambda: dumpfile.stream(f["activations/x"]), 30)
    assert max(sizes) <= 100 and sum(sizes) == a.size
    counts, edges = np.histogram(a.astype(np.float64), bins=30, range=(a.min(), a.max()))
    assert np.allclose(h.edges, edges)
    assert h.total == a.size and h.low == a.min() and h.high == a.max()
    assert h.counts.sum() + h.zeros + h.at_low + h.at_high == counts.sum()


def test_plot_refuses_a_picture_too_large_to_draw(tmp_path):
    path = write_dump(tmp_path / "a.h5", {"maps": np.ones((1, 2, 2, 4096), np.float32)})
    out = tmp_path / "p.png"
    r = run("plot", path, "-l", "maps", "--channels", ":", "--dpi", "1200", "-o", out)
    assert r.exit_code == 2 and not out.exists()
    line = error_line(r)
    assert line.startswith("error: --dpi 1200: the picture would be ") and "lower --dpi or show fewer channels" in line


def test_plot_refuses_a_sample_too_large_to_read(tmp_path, monkeypatch):
    from tensorprobe import plot

    path = write_dump(tmp_path / "a.h5", {"maps": np.ones((1, 8, 8, 4), np.float32)})
    monkeypatch.setattr(plot, "MAX_SAMPLE_VALUES", 255)
    r = run("plot", path, "-l", "maps", "-o", tmp_path / "p.png")
    assert r.exit_code == 1 and not (tmp_path / "p.png").exists()
    assert error_line(r) == (f"error: '{path}': one sample of /activations/maps (N, 8, 8, 4) holds 256 values, "
                             "more than the 255 plot reads at once to draw it; --hist draws any size")
    r = run("plot", path, "-l", "maps", "--hist", "-o", tmp_path / "p.png")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------- the layers table

@pytest.fixture(scope="module")
def attention_model(tmp_path_factory):
    import keras

    L = keras.layers
    x = keras.Input((4, 8), name="tokens")
    a = L.MultiHeadAttention(2, 4, name="attention_block_with_a_rather_long_name")(x, x)
    y = L.Dense(3, name="evil\x1b[31mred\nline")(a)
    model = keras.Model(x, y)
    path = tmp_path_factory.mktemp("attention") / "attention.keras"
    model.save(path)
    classes = {type(layer).__name__ for layer in model.layers}
    classes |= {type(s).__name__ for s in model.layers[1]._flatten_layers(include_self=False)}
    return path, classes


def test_layers_at_80_columns_never_folds_a_class_name(attention_model):
    path, classes = attention_model
    assert {"EinsumDense", "MultiHeadAttention", "InputLayer"} <= classes
    status, shown = run_on_terminal(["layers", path], columns=80)
    assert status == 0, shown
    lines = screen_lines(shown)
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("─")) + 1
    body = lines[start:start + next(i for i, line in enumerate(lines[start:]) if not line.strip())]
    assert max(len(line) for line in body) <= 80
    listed = [word for line in body for word in line.split()]
    for name in classes:
        parts = re.split(r"(?<=[a-z])(?=[A-Z])", name)
        whole_words = {"".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
        pieces = [w for w in listed if len(w) > 1 and w in name]
        assert pieces and set(pieces) <= whole_words, (name, pieces, shown)  # folded between words only
        assert set(parts) <= {p for piece in pieces for p in re.split(r"(?<=[a-z])(?=[A-Z])", piece)}
    assert "EinsumDense" not in listed and {"Einsum", "Dense"} <= set(listed)  # too wide here: folded
    assert "\x1b[31mred" not in shown and "evil\\x1b[31mred\\nline" in shown


def test_layers_in_a_pipe_escapes_a_layer_name(cli, attention_model):
    path, _ = attention_model
    r = cli("layers", path)
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if "evil" in line]
    assert rows[0][:3] == ["2", "evil\\x1b[31mred\\nline", "Dense"]
    assert rows[1][:2] == ["outputs:", "evil\\x1b[31mred\\nline"]
    assert json.loads(cli("layers", path, "--json").stdout)[-1]["path"] == "evil\x1b[31mred\nline"


# ---------------------------------------------------------------- usage errors before the model loads

@pytest.mark.parametrize("options, line", [
    (["--match", "("], "error: --match '(': not a valid regular expression (missing ): (); RE2 is used, "
                       "which has no back-references or look-around"),
    (["-l", "fc1", "--tensor-match", "a{2,1}"], "error: --tensor-match 'a{2,1}': not a valid regular expression "
                                                "(invalid repetition size: {2,1}); RE2 is used, which has no "
                                                "back-references or look-around"),
    (["-l", "fc1", "--max-bytes", "garbage"], "error: --max-bytes 'garbage': expected a size such as 500M or 2G"),
])
def test_option_values_are_checked_before_the_model_loads(cli, tmp_path, monkeypatch, options, line):
    from tensorprobe import api

    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(api, "open_model", never)  # what the CLI opens models with
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    r = cli("dump", "-m", model, *options, "-o", tmp_path / "out.h5", tmp_path / "x.npy")
    assert (r.exit_code, error_line(r)) == (2, line)
