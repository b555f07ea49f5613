"""The dump files tensorprobe writes, against files that are not what they claim and against
faults: merged dumps whose shards were replaced, emptied or changed; complete-marked files that
lost rows; inputs rewritten under --resume; --max-bytes against everything written; interrupts
around the rename into place; the output's folder removed; a merge whose output cannot be
written; a dangling symbolic link as the output; partial files of killed writers.

Every value checked is computed again here: layer outputs by Keras itself, content digests
with hashlib from the layout the docs give, row counts from the inputs.
"""

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import error_line

BIN = Path(sys.executable).parent / "tensorprobe"
ROWS = 64
LAYERS = ("d1", "d2")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A two-layer model, 64 input rows, each layer's output as Keras computes it, and the
    same dump in 3 shards merged virtually."""
    import keras

    from tensorprobe.cli import cli as command
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("hostile")
    keras.utils.set_random_seed(5)
    x = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="d1")(x)
    model = keras.Model(x, keras.layers.Dense(4, name="d2")(h), name="net")
    model.save(folder / "net.keras")
    data = np.random.default_rng(6).normal(size=(ROWS, 8)).astype("float32")
    np.save(folder / "x.npy", data)
    reference = {name: np.asarray(keras.Model(model.input, model.get_layer(name).output)(data)) for name in LAYERS}
    jobs = folder / "job"
    jobs.mkdir()
    for k in range(3):
        r = CliRunner().invoke(command, [str(a) for a in dump_args(folder, "--shard", f"{k}/3", "-o",
                                                                   jobs / f"part-{k}.h5")])
        assert r.exit_code == 0, r.output
    return {"folder": folder, "model": folder / "net.keras", "x": folder / "x.npy", "data": data,
            "keras": model, "reference": reference, "job": jobs}


def dump_args(folder, *extra, x=None):
    args = ["dump", "-m", Path(folder) / "net.keras", "-b", "8", "-q"]
    for layer in LAYERS:
        args += ["-l", layer]
    return [*args, *extra, x or Path(folder) / "x.npy"]


def merged_copy(net, tmp_path, *, copy=False, cli):
    """The three shards copied (times kept) into `tmp_path` and merged there."""
    for k in range(3):
        shutil.copy2(net["job"] / f"part-{k}.h5", tmp_path / f"part-{k}.h5")
    out = tmp_path / "all.h5"
    r = cli("merge", *(tmp_path / f"part-{k}.h5" for k in range(3)), *(["--copy"] if copy else []), "-o", out)
    assert r.exit_code == 0, r.stderr
    return out


def values(path):
    with h5py.File(path, "r") as f:
        return {name: f["activations"][name][()] for name in LAYERS}


def digest_by_hand(path):
    """data_sha256 as the docs define it, computed here from h5py reads: one SHA-256 per
    dataset over its rows (numbers: their bytes; strings: 8-byte little-endian length, then
    the UTF-8 bytes), then one over the sorted lines `path dtype shape digest`."""
    lines = []
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(found):
            ds = f[name]
            h = hashlib.sha256()
            if h5py.check_string_dtype(ds.dtype) is not None:
                for value in ds[()].reshape(-1):
                    h.update(len(value).to_bytes(8, "little") + value)
                kind = "utf-8"
            else:
                h.update(np.ascontiguousarray(ds[()]).tobytes())
                kind = ds.dtype.str
            lines.append(f"{name} {kind} {','.join(map(str, ds.shape))} {h.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ------------------------------------------------------ 1. merged dumps read only their shards


def test_every_dump_records_the_digest_of_its_contents(net):
    for k in range(3):
        path = net["job"] / f"part-{k}.h5"
        with h5py.File(path, "r") as f:
            assert f.attrs["data_sha256"] == digest_by_hand(path)


def test_a_virtual_merge_reads_its_shards_and_records_them(cli, net, tmp_path):
    out = merged_copy(net, tmp_path, cli=cli)
    for name in LAYERS:
        np.testing.assert_allclose(values(out)[name], net["reference"][name], rtol=1e-5, atol=1e-6)
    with h5py.File(out, "r") as f:
        assert list(f.attrs["merged_rows"]) == [21, 21, 22]  # rows [k*64//3, (k+1)*64//3)
        assert list(f.attrs["merged_sha256"]) == [digest_by_hand(tmp_path / f"part-{k}.h5") for k in range(3)]
        assert list(f.attrs["merged_size"]) == [os.stat(tmp_path / f"part-{k}.h5").st_size for k in range(3)]
        assert "data_sha256" not in f.attrs and "input_contents" not in f.attrs  # shard 0's, not the file's
    r = cli("summary", "--json", out)
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("case", ["emptied", "other job", "fewer rows", "edited in place"])
def test_every_reader_refuses_a_shard_that_changed(cli, net, tmp_path, case):
    import tensorprobe

    out = merged_copy(net, tmp_path, cli=cli)
    shard = tmp_path / "part-1.h5"
    if case == "emptied":
        shard.write_bytes(b"")
        why = "it is not a readable dump"
    elif case == "other job":  # shard 1/3 of the same inputs, stored as float16
        shard.unlink()
        r = cli(*dump_args(net["folder"], "--shard", "1/3", "--dtype", "float16", "-o", shard))
        assert r.exit_code == 0, r.stderr
        why = "it belongs to another job (its options_fingerprint differs)"
    elif case == "fewer rows":  # the same job, its dump cut to 20 rows, every count kept consistent
        with h5py.File(shard, "a") as f:
            for name in ("inputs/source", *(f"activations/{n}" for n in LAYERS)):
                f[name].resize((20,) + f[name].shape[1:])
            f.attrs["samples"] = 20
            f.attrs["shard_rows"] = [21, 41]
        why = "it holds 20 rows, 21 were merged"
    else:  # one value changed with h5py, every attribute kept
        with h5py.File(shard, "a") as f:
            f["activations/d2"][3] = f["activations/d2"][3] + 1
        why = "its contents differ from its digest (data_sha256): it was changed after it was written"
    head = f"error: '{out}' is a merged dump whose shard '{shard.name}' is no longer the file that was merged: {why}"
    for args in (["summary", out], ["summary", "--json", out], ["diff", out, tmp_path / "part-0.h5"],
                 ["plot", out, "-l", "d2", "-o", tmp_path / "p.png"]):
        r = cli(*args)
        assert r.exit_code == 1, (args, r.stderr)
        line = error_line(r)
        assert line.startswith(head) and line.endswith("; put that shard back or merge the shards again"), line
    with pytest.raises(tensorprobe.errors.DumpReadError, match=re.escape(why)):
        tensorprobe.open_dump(out)
    assert not (tmp_path / "p.png").exists()


def test_a_shard_copied_without_its_times_is_verified_and_read(cli, net, tmp_path):
    out = merged_copy(net, tmp_path, cli=cli)
    shard = tmp_path / "part-2.h5"
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # a new file, a new modification time, the same contents
    os.utime(shard, ns=(1, 1))
    r = cli("summary", "--json", out)
    assert r.exit_code == 0, r.stderr
    for name in LAYERS:
        np.testing.assert_allclose(values(out)[name], net["reference"][name], rtol=1e-5, atol=1e-6)


def test_shards_written_before_digests_are_hashed_by_merge(cli, net, tmp_path):
    for k in range(3):
        shutil.copy2(net["job"] / f"part-{k}.h5", tmp_path / f"part-{k}.h5")
        with h5py.File(tmp_path / f"part-{k}.h5", "a") as f:
            del f.attrs["data_sha256"]  # as an older tensorprobe wrote them
    out = tmp_path / "all.h5"
    r = cli("merge", *(tmp_path / f"part-{k}.h5" for k in range(3)), "-o", out)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert list(f.attrs["merged_sha256"]) == [digest_by_hand(tmp_path / f"part-{k}.h5") for k in range(3)]
    assert cli("summary", out).exit_code == 0
    np.testing.assert_allclose(values(out)["d2"], net["reference"]["d2"], rtol=1e-5, atol=1e-6)
    with h5py.File(tmp_path / "part-0.h5", "a") as f:
        f["activations/d2"][0] = 0
    r = cli("summary", out)
    assert r.exit_code == 1 and "its contents differ from its digest (data_sha256)" in error_line(r)


def test_an_old_merged_file_without_shard_records_is_refused(cli, net, tmp_path):
    out = merged_copy(net, tmp_path, cli=cli)
    with h5py.File(out, "a") as f:
        del f.attrs["merged_sha256"]
    r = cli("summary", out)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{out}' is a merged dump that does not record its shards' rows and "
                             "contents (merged by an older tensorprobe): merge the shards again")


def test_merge_copy_refuses_a_shard_changed_after_it_was_written(cli, net, tmp_path):
    for k in range(3):
        shutil.copy2(net["job"] / f"part-{k}.h5", tmp_path / f"part-{k}.h5")
    with h5py.File(tmp_path / "part-0.h5", "a") as f:
        f["activations/d1"][0, 0] = 1234.5
    r = cli("merge", "--copy", *(tmp_path / f"part-{k}.h5" for k in range(3)), "-o", tmp_path / "all.h5")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{tmp_path / 'part-0.h5'}': its rows no longer give its content digest "
                             "(data_sha256): the file changed after it was written")
    assert not (tmp_path / "all.h5").exists() and not list(tmp_path.glob(".all.h5*"))


# ------------------------------------------------------- 2. the job's rows; the inputs' contents


def cut_to(path, rows):
    """Doctor a complete dump to hold `rows` rows, consistently: every dataset, /inputs/source
    and `samples`."""
    with h5py.File(path, "a") as f:
        for name in ("inputs/source", *(f"activations/{n}" for n in LAYERS)):
            f[name].resize((rows,) + f[name].shape[1:])
        f.attrs["samples"] = rows


def test_a_complete_file_short_of_its_job_is_refused_and_redone(cli, net, tmp_path):
    out = tmp_path / "a.h5"
    assert cli(*dump_args(net["folder"], "-o", out)).exit_code == 0
    cut_to(out, 60)
    r = cli("summary", out)
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{out}' is a damaged dump: it holds 60 rows, not its job's 64 rows"
    r = cli(*dump_args(net["folder"], "--resume", "-o", out))
    assert r.exit_code == 2 and "is not this dump's complete output" in error_line(r)
    r = cli(*dump_args(net["folder"], "--resume", "--overwrite", "-o", out))
    assert r.exit_code == 0 and "skipped" not in r.stderr
    for name in LAYERS:
        np.testing.assert_allclose(values(out)[name], net["reference"][name], rtol=1e-5, atol=1e-6)


def test_a_shard_short_of_its_rows_is_refused(cli, net, tmp_path):
    shard = tmp_path / "part-2.h5"
    shutil.copy(net["job"] / "part-2.h5", shard)
    cut_to(shard, 20)
    r = cli("summary", shard)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{shard}' is a damaged dump: it holds 20 rows, not its shard's 22 rows "
                             "[42, 64) of 64")


def test_resume_redoes_a_dump_whose_input_was_rewritten(cli, net, tmp_path, keras_model):
    x = tmp_path / "x.npy"
    shutil.copy(net["x"], x)
    out = tmp_path / "a.h5"
    assert cli(*dump_args(net["folder"], "-o", out, x=x)).exit_code == 0
    r = cli(*dump_args(net["folder"], "--resume", "-o", out, x=x))
    assert r.exit_code == 0 and "skipped:" in r.stderr
    new = net["data"][::-1] * 2  # the same name, shape and size; other values
    np.save(x, new)
    r = cli(*dump_args(net["folder"], "--resume", "-o", out, x=x))
    assert r.exit_code == 2 and "is not this dump's complete output" in error_line(r)
    r = cli(*dump_args(net["folder"], "--resume", "--overwrite", "-o", out, x=x))
    assert r.exit_code == 0 and "skipped" not in r.stderr
    import keras

    model = net["keras"]
    for name in LAYERS:
        expected = np.asarray(keras.Model(model.input, model.get_layer(name).output)(new))
        np.testing.assert_allclose(values(out)[name], expected, rtol=1e-5, atol=1e-6)


def test_resume_redoes_an_api_dump_whose_array_changed(net, tmp_path):
    import tensorprobe

    out = tmp_path / "a.h5"
    data = net["data"].copy()
    tensorprobe.dump(net["model"], data, out, layers=["d2"])
    first = os.stat(out).st_mtime_ns
    tensorprobe.dump(net["model"], data, out, layers=["d2"], resume=True)
    assert os.stat(out).st_mtime_ns == first  # the same array: skipped
    data[5] += 1
    tensorprobe.dump(net["model"], data, out, layers=["d2"], resume=True, overwrite=True)
    expected = np.asarray(net["keras"](data))
    np.testing.assert_allclose(values_of(out, "d2"), expected, rtol=1e-5, atol=1e-6)


def values_of(path, name):
    with h5py.File(path, "r") as f:
        return f["activations"][name][()]


# ------------------------------------------------------------- 3. --max-bytes counts everything


@pytest.fixture(scope="module")
def many_rows(net):
    """8,000 rows of the model's input under a long file name: /inputs/source (each row
    `NAME[i]`) outweighs the datasets' 640 KB many times."""
    name = net["folder"] / ("rows_" + "n" * 180 + ".npy")
    np.save(name, np.random.default_rng(9).normal(size=(8000, 8)).astype("float32"))
    return name


def test_max_bytes_counts_the_row_sources(cli, net, many_rows, tmp_path):
    source_bytes = sum(len(f"{many_rows}[{i}]".encode()) for i in range(8000))
    data_bytes = 8000 * (16 + 4) * 4
    assert data_bytes < (1 << 20) < source_bytes  # the datasets alone fit in 1 MiB; the dump does not
    out = tmp_path / "a.h5"
    r = cli(*dump_args(net["folder"], "--max-bytes", "1M", "-o", out, x=many_rows))
    assert r.exit_code == 2
    assert re.fullmatch(rf"error: --output '{re.escape(str(out))}': the dump needs about [\d.]+ MiB, more than "
                        r"--max-bytes 1\.0 MiB", error_line(r)), r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch", [1, 32, 500])
def test_the_estimate_bounds_the_real_file_size(net, many_rows, tmp_path, batch):
    from tensorprobe import api, pipeline
    from tensorprobe.probe import Storage

    told = []
    out = tmp_path / "a.h5"
    pipeline.run_dump(net["model"], [os.fspath(many_rows)], (), out, pipeline.Selection(layers=LAYERS),
                      api.preparation(), Storage(), pipeline.Job(batch),
                      on_size=lambda needed, free: told.append(needed))
    size = os.path.getsize(out)
    # the datasets and the row sources, counted here from the shapes and names
    floor = 8000 * (16 + 4) * 4 + sum(len(f"{many_rows}[{i}]".encode()) for i in range(8000))
    assert floor < size <= told[0] <= 1.35 * size + (64 << 10), (size, told)


def test_max_bytes_holds_where_shapes_are_known_only_when_running(cli, net, many_rows, tmp_path):
    """Graph tensors have no size before the first batch: the writer checks it then."""
    r = cli("tensors", net["model"], "--json")
    assert r.exit_code == 0, r.stderr
    import json

    names = [t["name"] for t in json.loads(r.stdout) if t.get("op") in ("Relu", "MatMul", "BiasAdd")]
    assert names, r.stdout
    out = tmp_path / "t.h5"
    r = cli("dump", "-m", net["model"], "-q", "--tensor", names[0], "--max-bytes", "100K", "-o", out, many_rows)
    assert r.exit_code == 2, r.stderr
    assert re.fullmatch(rf"error: --output '{re.escape(str(out))}': the dump needs about [\d.]+ MiB, more than "
                        r"--max-bytes 0\.1 MiB", error_line(r)), r.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------- 4. interrupts around the rename into place


def test_an_interrupt_just_after_the_rename_is_a_success(cli, net, tmp_path, monkeypatch):
    from tensorprobe import store

    out = tmp_path / "a.h5"
    out.write_bytes(b"old results")
    real = os.replace

    def replace_then_interrupted(src, dst):
        real(src, dst)
        raise KeyboardInterrupt  # Ctrl-C arrives as the rename returns

    monkeypatch.setattr(store.os, "replace", replace_then_interrupted)
    r = cli(*dump_args(net["folder"], "--overwrite", "-o", out))
    assert r.exit_code == 0, r.stderr
    assert r.stderr == f"wrote {out} (interrupted once it was complete)\n"
    for name in LAYERS:
        np.testing.assert_allclose(values(out)[name], net["reference"][name], rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_an_interrupt_while_the_summary_is_read_is_a_success(cli, net, tmp_path, monkeypatch):
    from tensorprobe import store

    out = tmp_path / "a.h5"
    monkeypatch.setattr(store, "read_summary", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    r = cli(*dump_args(net["folder"], "-o", out))
    assert r.exit_code == 0 and r.stderr == f"wrote {out} (interrupted once it was complete)\n"
    np.testing.assert_allclose(values(out)["d2"], net["reference"]["d2"], rtol=1e-5, atol=1e-6)


def test_an_interrupt_python_dropped_still_stops_before_the_rename(cli, net, tmp_path, monkeypatch):
    """The handler ran (as a Ctrl-C does) but its exception was lost (raised inside a
    finaliser): the dump must not be moved into place, and the command ends with 130."""
    from tensorprobe import store

    out = tmp_path / "a.h5"
    out.write_bytes(b"old results")
    write_stats = store.write_stats

    def interrupted_then_dropped(ds, stats):
        store.request_stop(KeyboardInterrupt)  # what the CLI's SIGINT handler records
        return write_stats(ds, stats)

    monkeypatch.setattr(store, "write_stats", interrupted_then_dropped)
    r = cli(*dump_args(net["folder"], "--overwrite", "-o", out))
    assert r.exit_code == 130 and r.stderr == "error: interrupted\n"
    assert out.read_bytes() == b"old results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A model that writes 4 KiB a row, and 4,000 rows of input: with batches of one row, a
    dump takes seconds, time to send it signals."""
    import keras

    folder = tmp_path_factory.mktemp("wide")
    data = np.random.default_rng(1).normal(size=(4000, 8)).astype("float32")
    np.save(folder / "x.npy", data)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1024, name="wide")], name="w")
    model.save(folder / "w.keras")
    return {"model": model, "path": folder / "w.keras", "x": folder / "x.npy", "data": data}


@pytest.mark.parametrize("when", [0.5, 0.97, "renamed"])
def test_a_real_ctrl_c_near_the_end_either_stops_or_succeeds_never_both(wide, tmp_path, when):
    """SIGINT sent to a real dump once its partial file holds `when` of the datasets' bytes,
    or once the output is the new file: either exit 130 with the old file untouched, or exit 0
    with the new complete file; never 130 after the old file was replaced (once renamed, the
    run has succeeded, also while the process shuts down), never 0 with the old file."""
    rows, units = wide["data"].shape[0], 1024
    out = tmp_path / "out.h5"
    out.write_bytes(b"old results")
    p = subprocess.Popen([BIN, "dump", "-m", str(wide["path"]), "-l", "wide", "-b", "1", "-q",
                          "--overwrite", "-o", str(out), str(wide["x"])], stderr=subprocess.PIPE, text=True)
    deadline, seen = time.time() + 180, None
    while time.time() < deadline and p.poll() is None:
        if when == "renamed":
            if out.read_bytes()[:11] != b"old results":
                break
        for partial in tmp_path.glob(".out.h5.*.partial"):
            seen = partial.name
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                if when != "renamed" and partial.stat().st_size >= when * rows * units * 4:
                    break
        else:
            time.sleep(0.002)
            continue
        break
    assert seen is not None and re.fullmatch(rf"\.out\.h5\.{p.pid}@[A-Za-z0-9-]+\.\w+\.partial", seen), seen
    assert p.poll() is None, "the dump ended before the signal: make it slower"
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    if p.returncode == 130:
        assert when != "renamed"
        assert stderr == "error: interrupted\n"
        assert out.read_bytes() == b"old results"
    else:
        assert p.returncode == 0, stderr
        assert stderr in ("", f"wrote {out} (interrupted once it was complete)\n")
        with h5py.File(out, "r") as f:
            assert f.attrs["complete"] and f["activations/wide"].shape == (rows, units)
            np.testing.assert_allclose(f["activations/wide"][-5:], np.asarray(wide["model"](wide["data"][-5:])),
                                       rtol=1e-5, atol=1e-5)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.h5"]


# ------------------------------------------------------ 5. faults while writing: one error line


def test_the_output_folder_removed_mid_dump(cli, net, tmp_path, monkeypatch):
    from tensorprobe import store

    folder = tmp_path / "out"
    folder.mkdir()
    append = store.DumpWriter.append

    def remove_folder_first(self, sources, arrays):
        if self.rows == 8:
            shutil.rmtree(folder)
        return append(self, sources, arrays)

    monkeypatch.setattr(store.DumpWriter, "append", remove_folder_first)
    r = cli(*dump_args(net["folder"], "-o", folder / "a.h5"))
    assert r.exit_code == 1
    assert error_line(r) == (f"error: --output '{folder / 'a.h5'}': its folder '{folder}' no longer exists "
                             "(removed while the dump ran?)")


def test_merge_copy_blames_the_output_when_it_cannot_be_written(net, tmp_path):
    import resource

    big = tmp_path / "big"
    big.mkdir()
    for k in range(2):
        r = subprocess.run([BIN, *map(str, dump_args(net["folder"], "--shard", f"{k}/2", "-o",
                                                      big / f"part-{k}.h5", x=net["x"]))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    out = tmp_path / "all.h5"
    out.write_bytes(b"keep me")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    r = subprocess.run([BIN, "merge", "--copy", "--overwrite", str(big / "part-0.h5"), str(big / "part-1.h5"),
                        "-o", str(out)], preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr == f"error: --output '{out}': write failed: File too large\n"
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.h5", "big"]


# ------------------------------------------------ 6. symbolic links; partial files left behind


def test_a_dangling_symlink_as_output_is_an_existing_output(cli, net, tmp_path):
    link = tmp_path / "a.h5"
    link.symlink_to(tmp_path / "nowhere.h5")
    r = cli(*dump_args(net["folder"], "-o", link))
    assert r.exit_code == 2
    assert error_line(r) == (f"error: --output '{link}' is a symbolic link to '{tmp_path / 'nowhere.h5'}', which "
                             "does not exist (it would be replaced by the new file); pass --overwrite to replace it")
    assert link.is_symlink()
    r = cli(*dump_args(net["folder"], "--overwrite", "-o", link))
    assert r.exit_code == 0, r.stderr
    assert not link.is_symlink() and not (tmp_path / "nowhere.h5").exists()
    np.testing.assert_allclose(values(link)["d2"], net["reference"]["d2"], rtol=1e-5, atol=1e-6)


def test_partials_of_writers_that_no_longer_run_are_removed(cli, net, tmp_path):
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        names = {
            "killed": f".a.h5.{gone.pid}@{host}.k1ll3d00.partial",
            "running": f".a.h5.{alive.pid}@{host}.runn1ng0.partial",
            "other host": f".a.h5.{gone.pid}@elsewhere-{host}.0th3rh0s.partial",
            "unnamed writer": ".a.h5.x1y2z3ab.partial",
            "other output": f".b.h5.{gone.pid}@{host}.0th3r0ut.partial",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        r = cli(*dump_args(net["folder"], "-o", tmp_path / "a.h5"))
        assert r.exit_code == 0, r.stderr
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["a.h5", *(n for k, n in names.items() if k != "killed")])
    finally:
        alive.kill()
        alive.wait()
