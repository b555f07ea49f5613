"""The command line as users meet it: help, version, errors, exit codes, files left alone."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import error_line, run_on_terminal, screen_lines
from tensorprobe import __version__

BIN = Path(sys.executable).parent / "tensorprobe"


def test_help_version_summary_and_diff_do_not_import_tensorflow(cli, zoo, tmp_path):
    dump = tmp_path / "acts.h5"
    r = cli("dump", "-q", "-m", zoo["transfer.keras"], "--all", "-o", dump, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    parts = [tmp_path / f"part-{k}.h5" for k in range(2)]
    for k, part in enumerate(parts):
        r = cli("dump", "-q", "-m", zoo["transfer.keras"], "--all", "--shard", f"{k}/2", "-o", part, zoo["input.npy"])
        assert r.exit_code == 0, r.stderr
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tensorprobe.cli import cli\n"
        "def heavy(names):\n"
        "    return sorted(m for m in names if m in sys.modules)\n"
        "for args in (['--help'], ['--version'], ['dump', '--help'], ['layers', '--help'],\n"
        "             ['summary', '--help'], ['diff', '--help'], ['merge', '--help'], ['compare', '--help'],\n"
        "             ['dump', '--bogus'], ['dump', '-m', 'missing.keras', '-l', 'x', 'a.npy'],\n"
        "             ['plot', '--help'], ['plot', 'missing.h5', '-l', 'x', '-o', 'o.png']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code in (0, 2), (args, r.output)\n"
        "print(heavy(('tensorflow', 'keras', 'tf_keras', 'h5py')))\n"
        f"dump = {str(dump)!r}\n"
        "for args in (['summary', dump], ['summary', '--json', dump], ['diff', dump, dump],\n"
        "             ['diff', '--json', dump, dump]):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0 and 'vgg16/block1_conv1' in r.stdout, (args, r.output)\n"
        f"r = CliRunner().invoke(cli, ['merge', {str(parts[1])!r}, {str(parts[0])!r}, '-o', {str(tmp_path / 'all.h5')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(heavy(('tensorflow', 'keras', 'tf_keras', 'h5py')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == ["[]", "['h5py']"]


def test_plot_reads_a_dump_without_tensorflow(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.attrs.update({"format": "tensorprobe", "format_version": 1, "complete": True})
        f["inputs/source"] = np.array([b"a.npy[0]", b"a.npy[1]"], dtype=h5py.string_dtype())
        f["activations/conv"] = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tensorprobe.cli import cli\n"
        "for extra in ([], ['--hist']):\n"
        f"    r = CliRunner().invoke(cli, ['plot', {str(tmp_path / 'd.h5')!r}, '-l', 'conv', '-o', "
        f"{str(tmp_path / 'o.png')!r}, '--overwrite', *extra])\n"
        "    assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    assert (tmp_path / "o.png").read_bytes().startswith(b"\x89PNG")


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"tensorprobe, version {__version__}"


def test_installed_script_dumps_with_model_from_environment(zoo, tmp_path):
    """The README's example, run as written by the installed script, with a clean stderr."""
    env = {**os.environ, "TENSORPROBE_MODEL": str(zoo["transfer.keras"])}
    env.pop("TENSORPROBE_DEBUG", None)
    r = subprocess.run([BIN, "dump", "--layer", "block1_conv2", str(zoo["input.npy"])],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1] == "wrote activations.h5"
    for noise in ("oneDNN", "cuda", "absl", "I0000", "WARNING", "tensorflow"):
        assert noise not in r.stderr, r.stderr
    with h5py.File(tmp_path / "activations.h5", "r") as f:
        assert f["activations/vgg16/block1_conv2"].shape == (4, 32, 32, 8)
        assert bool(f.attrs["complete"])


def test_debug_shows_the_traceback_then_the_same_error_line_and_status(cli, zoo, tmp_path):
    args = ["dump", "-m", str(zoo["transfer.keras"]), "-l", "nope", "-o", str(tmp_path / "a.h5"), str(zoo["input.npy"])]
    plain = cli(*args)
    assert plain.exit_code == 2
    line = error_line(plain)
    env = {k: v for k, v in os.environ.items() if k != "TENSORPROBE_DEBUG"}
    r = subprocess.run([BIN, "--debug", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "UnknownLayerError" in r.stderr
    assert r.stderr.splitlines()[-1] == line
    assert r.stdout == "" and sorted(tmp_path.iterdir()) == []


def test_bare_tensorprobe_shows_the_help():
    r = subprocess.run([BIN], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == "Usage: tensorprobe [OPTIONS] COMMAND [ARGS]..."
    assert "error:" not in r.stderr
    commands = lines[lines.index("Commands:") + 1:]
    assert sorted(line.split()[0] for line in commands if line.strip()) == sorted(
        ["compare", "diff", "dump", "layers", "merge", "nanhunt", "patch", "plot", "run", "summary", "tensors",
         "validate"])
    assert r.stderr == subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=60).stdout


def test_output_named_hdf5_is_accepted(cli, zoo, tmp_path):
    for name in ("acts.hdf5", "acts.H5", "acts"):
        r = cli("dump", "-q", "-m", zoo["transfer.keras"], "-l", "fc1", "-o", tmp_path / name, zoo["input.npy"])
        assert r.exit_code == 0, r.stderr
        with h5py.File(tmp_path / name, "r") as f:
            assert f["activations/fc1"].shape == (4, 12)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_output(zoo, tmp_path, signum, status):
    big = np.random.default_rng(0).uniform(0, 255, (3000, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "big.npy", big)
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    p = subprocess.Popen([BIN, "dump", "-m", str(zoo["transfer.keras"]), "--all", "-b", "8",
                          "--overwrite", "-o", str(out), str(tmp_path / "big.npy")],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signum)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == status, stderr
    assert stderr == "error: interrupted\n"
    assert out.read_bytes() == b"precious"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["big.npy", "out.h5"]


def _case_files(tmp):
    """Bad inputs the error table uses, made fresh in `tmp`."""
    (tmp / "random.h5").write_bytes(os.urandom(4096))
    (tmp / "not_a_model.h5").write_bytes(b"")
    with h5py.File(tmp / "not_a_model.h5", "w") as f:
        f["x"] = np.arange(3)
    (tmp / "folder").mkdir()
    (tmp / "notes.txt").write_text("hello")
    np.save(tmp / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp / "complex.npy", np.zeros((2, 32, 32, 3), np.complex64))
    np.save(tmp / "strings.npy", np.array(["a", "b"]))
    np.save(tmp / "wrong_shape.npy", np.zeros((2, 28, 28, 3), np.float32))
    np.save(tmp / "wrong_rank.npy", np.zeros((32, 32), np.float32))
    np.save(tmp / "empty.npy", np.zeros((0, 32, 32, 3), np.float32))
    good = np.zeros((2, 32, 32, 3), np.float32)
    np.save(tmp / "good.npy", good)
    data = (tmp / "good.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(data[: len(data) // 2])
    (tmp / "existing.h5").write_bytes(b"my old results")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (tmp / "empty_folder").mkdir()
    np.savez(tmp / "wrong_keys.npz", picture=np.zeros((2, 32, 32, 3), np.float32), extra=np.zeros((2, 4)))
    _fake_dump(tmp / "incomplete.h5", complete=False)
    _fake_dump(tmp / "whole.h5", complete=True)
    whole = (tmp / "whole.h5").read_bytes()
    (tmp / "truncated_dump.h5").write_bytes(whole[: len(whole) // 2])


def _fake_dump(path, complete):
    """A small file in the dump layout (README), written with h5py alone."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "tensorprobe", "format_version": 1, "complete": complete, "samples": 2})
        f["inputs/source"] = np.array([b"a.npy[0]", b"a.npy[1]"], dtype=h5py.string_dtype())
        ds = f.create_dataset("activations/fc1", data=np.arange(2 * 3000, dtype=np.float32).reshape(2, 3000))
        ds.attrs.update({"layer": "fc1", "layer_class": "Dense", "order": 0})


def _model(zoo, name):
    return str(zoo[name])


# (id, args with {tmp}/{zoo:<name>} placeholders, exit status, text the error line must contain)
CASES = [
    ("unknown-option", ["dump", "--bogus"], 2, "--bogus"),
    ("unknown-command", ["dunp"], 2, "dunp"),
    ("model-missing", ["dump", "-m", "{tmp}/missing.keras", "-l", "x", "{tmp}/good.npy"], 2, "missing.keras"),
    ("model-option-missing", ["dump", "-l", "x", "{tmp}/good.npy"], 2, "--model"),
    ("no-layer", ["dump", "-m", "{zoo:transfer.keras}", "{tmp}/good.npy"], 2, "--layer"),
    ("unknown-layer", ["dump", "-m", "{zoo:transfer.keras}", "-l", "block9_conv1", "{tmp}/good.npy"], 2, "block9_conv1"),
    ("layer-suggestion", ["dump", "-m", "{zoo:transfer.keras}", "-l", "blok1_conv2", "{tmp}/good.npy"], 2, "did you mean 'vgg16/block1_conv2'"),
    ("duplicate-layer", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-l", "3", "{tmp}/good.npy"], 2, "already selected"),
    ("bad-index", ["dump", "-m", "{zoo:transfer.keras}", "-l", "1.99", "{tmp}/good.npy"], 2, "1.99"),
    ("bad-match", ["dump", "-m", "{zoo:transfer.keras}", "--match", "[", "{tmp}/good.npy"], 2, "--match"),
    ("match-nothing", ["dump", "-m", "{zoo:transfer.keras}", "--match", "zzz", "{tmp}/good.npy"], 2, "--match 'zzz'"),
    ("input-missing", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/nope.npy"], 2, "nope.npy"),
    ("batch-size-0", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-b", "0", "{tmp}/good.npy"], 2, "--batch-size"),
    ("batch-size-negative", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-b", "-3", "{tmp}/good.npy"], 2, "--batch-size"),
    ("output-exists", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/existing.h5", "{tmp}/good.npy"], 2, "--overwrite"),
    ("output-folder-missing", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/no/such/out.h5", "{tmp}/good.npy"], 2, "does not exist"),
    ("output-npy", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/acts.npy", "{tmp}/good.npy"], 2, "--output '{tmp}/acts.npy': the output is an HDF5 file, not NumPy (.npy); name it .h5 or .hdf5"),
    ("output-txt-overwrite", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "--overwrite", "-o", "{tmp}/notes.txt", "{tmp}/good.npy"], 2, "not text (.txt); name it .h5 or .hdf5"),
    ("output-json", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/acts.JSON", "{tmp}/good.npy"], 2, "not JSON (.json)"),
    ("output-keras", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/model.keras", "{tmp}/good.npy"], 2, "--output"),
    ("merge-output-png", ["merge", "{tmp}/whole.h5", "-o", "{tmp}/all.png"], 2, "--output '{tmp}/all.png': the output is an HDF5 file, not PNG (.png)"),
    ("merge-output-tflite", ["merge", "{tmp}/whole.h5", "-o", "{tmp}/all.tflite"], 2, ".h5 or .hdf5"),
    ("output-is-folder", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/folder", "{tmp}/good.npy"], 2, "folder"),
    ("random-bytes-h5", ["layers", "{tmp}/random.h5"], 1, "random.h5"),
    ("hdf5-without-model", ["layers", "{tmp}/not_a_model.h5"], 1, "holds no model"),
    ("text-as-model", ["layers", "{tmp}/notes.txt"], 1, "not a model file tensorprobe reads"),
    ("folder-as-model", ["layers", "{tmp}/folder"], 1, "no SavedModel"),
    ("truncated-keras", ["layers", "{tmp}/truncated.keras"], 1, "truncated.keras"),
    ("lambda-keras", ["layers", "{zoo:lambda.keras}"], 1, "--unsafe"),
    ("lambda-keras2-h5", ["layers", "{zoo:keras2_lambda.h5}"], 1, "--unsafe"),
    ("object-npy", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/existing.h5", "--overwrite", "{tmp}/objects.npy"], 1, "never unpickled"),
    ("complex-npy", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/complex.npy"], 1, "complex64"),
    ("string-npy", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/strings.npy"], 1, "strings.npy"),
    ("wrong-shape", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "-o", "{tmp}/existing.h5", "--overwrite", "{tmp}/wrong_shape.npy"], 1, "(N, 32, 32, 3)"),
    ("wrong-rank", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/wrong_rank.npy"], 1, "wrong_rank.npy"),
    ("zero-samples", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/empty.npy"], 1, "no samples"),
    ("truncated-npy", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/good.npy", "{tmp}/truncated.npy"], 1, "truncated.npy"),
    ("missing-custom-class", ["layers", "{zoo:subclassed.keras}"], 1, "--custom-objects"),
    ("unknown-tensor", ["dump", "-m", "{zoo:transfer.keras}", "--tensor", "no/such/op", "{tmp}/good.npy"], 2, "no/such/op"),
    ("corrupt-image", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/corrupt.png"], 1, "corrupt.png"),
    ("empty-folder", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/empty_folder"], 2, "empty_folder"),
    ("glob-matches-nothing", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "{tmp}/*.jpeg"], 2, "*.jpeg"),
    ("npz-wrong-keys", ["dump", "-m", "{zoo:two_inputs.keras}", "-l", "merged", "{tmp}/wrong_keys.npz"], 1, "wrong_keys.npz"),
    ("labels-missing", ["dump", "-m", "{zoo:transfer.keras}", "-l", "fc1", "--gradients", "--target", "loss:mse", "--labels", "{tmp}/nope.npy", "{tmp}/good.npy"], 2, "--labels"),
    ("signature-on-a-file", ["layers", "{zoo:transfer.keras}", "--signature", "serving_default"], 2, "--signature"),
    ("summary-not-hdf5", ["summary", "{tmp}/notes.txt"], 1, "not an HDF5 file"),
    ("summary-not-a-dump", ["summary", "{tmp}/not_a_model.h5"], 1, "not a tensorprobe dump"),
    ("summary-truncated-dump", ["summary", "{tmp}/truncated_dump.h5"], 1, "truncated_dump.h5"),
    ("summary-incomplete-dump", ["summary", "{tmp}/incomplete.h5"], 1, "incomplete"),
    ("diff-not-hdf5", ["diff", "{tmp}/whole.h5", "{tmp}/good.npy"], 1, "good.npy"),
    ("diff-incomplete-dump", ["diff", "{tmp}/whole.h5", "{tmp}/incomplete.h5"], 1, "incomplete"),
    ("diff-missing-file", ["diff", "{tmp}/whole.h5", "{tmp}/nope.h5"], 2, "nope.h5"),
    ("plot-incomplete-dump", ["plot", "{tmp}/incomplete.h5", "-l", "fc1", "-o", "{tmp}/p.png"], 1, "incomplete"),
]


@pytest.mark.parametrize("args,status,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_error_line_and_changes_nothing(cli, zoo, tmp_path, args, status, text):
    _case_files(tmp_path)
    keras_zip = zoo["transfer.keras"].read_bytes()
    (tmp_path / "truncated.keras").write_bytes(keras_zip[: len(keras_zip) // 2])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    model_before = {p: p.stat().st_mtime_ns for p in zoo.values()}
    filled = []
    for a in args:
        a = a.replace("{tmp}", str(tmp_path))
        if a.startswith("{zoo:"):
            a = str(zoo[a[5:-1]])
        filled.append(a)
    r = cli(*filled, env={"TENSORPROBE_MODEL": None})
    assert r.exit_code == status, r.stderr
    assert text.replace("{tmp}", str(tmp_path)) in error_line(r)
    assert r.stdout == ""
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing changed, nothing new (no output, no leftover temporary)
    assert {p: p.stat().st_mtime_ns for p in zoo.values()} == model_before


def test_overwrite_replaces_an_existing_output(cli, zoo, tmp_path):
    out = tmp_path / "acts.h5"
    out.write_bytes(b"old")
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "gap", "--overwrite", "-o", out, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert f["activations/gap"].shape == (4, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5"]


# ------------------------------------------------- terminals, pipes and logs


def _nested_paths(keras_model, zoo, pattern):
    """Paths of the layers inside app.keras's nested MobileNetV2 whose name matches, from Keras."""
    base = keras_model(zoo["app.keras"]).layers[1]
    return [f"{base.name}/{layer.name}" for layer in base.layers if re.search(pattern, layer.name)]


def _table(lines, column):
    """The lines of the table whose header names `column`: the header to the end of the body.
    (Plain lines around it, a title, a footer, are one line each, wrapped by the terminal.)"""
    header = next(i for i, line in enumerate(lines) if re.search(rf"(^|\s){re.escape(column)}(\s|$)", line))
    while header > 0 and lines[header - 1].strip():  # a header folded onto several lines
        header -= 1
    rule = next(i for i in range(header, len(lines)) if lines[i].strip().startswith("─"))
    end = next((i for i in range(rule + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[header:end]


def _whole_on_a_line(name, lines):
    return any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", line) for line in lines)


@pytest.fixture
def long_folder(tmp_path):
    """A folder whose path is over 150 characters, as on CI machines."""
    folder = tmp_path / ("a_temporary_folder_whose_path_is_long_" * 2) / "another_level_of_nesting_here_too"
    folder.mkdir(parents=True)
    assert len(str(folder)) > 150
    return folder


def test_layers_on_a_terminal_of_80_columns_shows_every_path_whole(zoo, keras_model):
    status, shown = run_on_terminal(["layers", zoo["app.keras"], "--filter", "block_6"], columns=80)
    assert status == 0, shown
    lines = screen_lines(shown)
    paths = _nested_paths(keras_model, zoo, "block_6")
    assert len(paths) == 9 and max(map(len, paths)) > 40
    for path in paths:
        assert _whole_on_a_line(path, lines), (path, shown)
    assert "…" not in shown
    assert max(len(line) for line in _table(lines, "path")) <= 80
    assert "(left out at this width: trainable, params; see --json)" in lines


def test_layers_in_a_pipe_are_as_wide_as_their_content(cli, zoo, keras_model):
    r = cli("layers", zoo["app.keras"], "--filter", "block_6")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [line for line in lines if "block_6" in line]
    paths = _nested_paths(keras_model, zoo, "block_6")
    assert len(rows) == len(paths)  # one line a layer, none wrapped
    for row, path in zip(rows, paths):
        assert row.split()[2] == path and row.split()[-1] == "no"  # every column there, trainable last
    assert "…" not in r.stdout and all(line == line.rstrip() for line in lines)


def test_a_path_wider_than_the_terminal_folds_whole(cli, zoo, keras_model, monkeypatch):
    """At 40 columns paths of 39 and 42 characters cannot fit beside the other columns: they fold
    onto several lines, no character lost."""
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "40")
    r = cli("layers", zoo["app.keras"], "--filter", "block_6_(expand|depthwise)_relu")
    assert r.exit_code == 0, r.stderr
    lines = screen_lines(r.stdout)
    table = _table(lines, "path")
    assert "…" not in r.stdout and max(len(line) for line in table) <= 40
    header = next(line for line in table if re.search(r"(^|\s)path(\s|$)", line))
    start = header.index("path")
    after = re.search(r"\S", header[start + len("path"):])
    width = after.start() + len("path") - 3  # three spaces between columns
    body = table[next(i for i, line in enumerate(table) if line.strip().startswith("─")) + 1:]
    segments = [line[start:start + width].strip() for line in body]
    assert any(segment.endswith("/") for segment in segments)  # broken after a '/' where it can be
    column = "".join(segments).replace(" ", "")
    paths = _nested_paths(keras_model, zoo, "block_6_(expand|depthwise)_relu")
    assert len(paths) == 2
    for path in paths:
        assert not any(path in line for line in table)  # too wide for one line: folded,
        assert path in column, (path, r.stdout)  # every character kept, in order


def test_dump_summary_and_diff_on_a_terminal_and_in_a_pipe_never_cut_a_name(cli, zoo, keras_model,
                                                                           long_folder, monkeypatch):
    out = long_folder / "acts.h5"
    args = ["dump", "-m", zoo["app.keras"], "--match", "block_6_(expand|project)", "--gradients", "-b", "4",
            "-o", out, zoo["images7.npy"]]
    names = [f"{group}{path}" for group in ("", "gradients/") for path in
             _nested_paths(keras_model, zoo, "block_6_(expand|project)")]
    assert len(names) == 10 and max(map(len, names)) > 45

    status, shown = run_on_terminal(args, columns=80)
    assert status == 0, shown
    lines = screen_lines(shown)
    assert f"wrote {out}" in lines  # one line, wrapped by the terminal alone
    assert f"{out}: 7 samples from {zoo['app.keras']}" in lines
    assert "…" not in shown
    for name in names:
        rows = [line for line in lines if _whole_on_a_line(name, [line])]
        assert len(rows) == 1 and len(rows[0]) <= 80, (name, shown)

    r = cli(*args, "--overwrite")  # stderr in a pipe
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"{out}: 7 samples from {zoo['app.keras']}" and lines[-1] == f"wrote {out}"
    rows = [line.split() for line in lines if line.split() and line.split()[0] in names]
    assert [row[0] for row in rows] == names and {len(row) for row in rows} == {13}  # every column
    assert "…" not in r.stderr

    for command in (["summary", out], ["diff", out, out]):
        r = cli(*command)  # stdout in a pipe
        assert r.exit_code == 0, r.stderr
        assert [line.split()[0] for line in r.stdout.splitlines() if line.split() and line.split()[0] in names] == names
        assert "…" not in r.stdout and f"{out}" in r.stdout
        with monkeypatch.context() as m:  # on a terminal of 80 columns
            from rich.console import Console

            m.setattr(Console, "is_terminal", property(lambda self: True))
            m.setenv("TERM", "xterm-256color")
            m.setenv("COLUMNS", "80")
            r = cli(*command)
        assert r.exit_code == 0, r.stderr
        lines = screen_lines(r.stdout)
        assert "…" not in r.stdout
        for name in names:
            rows = [line for line in lines if _whole_on_a_line(name, [line])]
            assert len(rows) == 1 and len(rows[0]) <= 80, (name, r.stdout)
