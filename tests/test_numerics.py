"""Numerics: Fletcher-32 checksums on every dump dataset (a flipped byte is one error line),
`nanhunt` (the first layer going NaN or Inf, forward and backward) and `validate` (a dump
replayed against its model). Models are tiny and built once per module."""

import json
import os

import h5py
import numpy as np
import pytest

from conftest import error_line

import tensorprobe
from tensorprobe import store
from tensorprobe.errors import DumpReadError


# ---- models and dumps, once per module -----------------------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A small healthy model, its inputs, a dump of every layer and 3 shards of the same."""
    import keras

    folder = tmp_path_factory.mktemp("numerics_plain")
    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((6,), name="x")
    h = L.Dense(5, activation="relu", name="d1")(x)
    out = L.Dense(3, name="d2")(h)
    model = keras.Model(x, out, name="plain")
    model.save(folder / "plain.keras")
    data = np.random.default_rng(0).normal(size=(9, 6)).astype("float32")
    np.save(folder / "x.npy", data)
    tensorprobe.dump(folder / "plain.keras", folder / "x.npy", folder / "all.h5", all_layers=True, batch_size=4)
    for k in range(3):
        tensorprobe.dump(folder / "plain.keras", folder / "x.npy", folder / f"part-{k}.h5", all_layers=True,
                         shard=f"{k}/3")
    return {"folder": folder, "model": folder / "plain.keras", "x": folder / "x.npy", "dump": folder / "all.h5",
            "parts": [folder / f"part-{k}.h5" for k in range(3)], "data": data}


def flip_chunk_byte(path, dataset, keep_times=False):
    """Flip one byte inside the first chunk of `dataset` in the file `path` (its offset from
    HDF5's own chunk index), as a bad disk or copy would."""
    info = os.stat(path)
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        byte = f.read(1)
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    if keep_times:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def corrupted_copy(src, dst, dataset, keep_times=False):
    dst.write_bytes(src.read_bytes())
    os.utime(dst, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns))
    flip_chunk_byte(dst, dataset, keep_times)
    return dst


CHECKSUM_WORDS = ("fails its Fletcher-32 checksum: a chunk changed after it was written (a damaged disk or "
                  "copy); its values cannot be trusted")


# ---- checksums ------------------------------------------------------------------------------

def test_every_numeric_dataset_of_a_dump_carries_a_checksum(plain):
    with h5py.File(plain["dump"], "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
        numeric = [ds for ds in found if not store.is_string(ds.dtype)]
        assert sorted(ds.name for ds in numeric) == ["/activations/d1", "/activations/d2"]
        assert all(ds.fletcher32 and ds.chunks for ds in numeric)
        # HDF5 allows no filter on variable-length strings: /inputs/source has none
        assert not f["inputs/source"].fletcher32


def test_a_flipped_byte_is_one_error_naming_file_and_dataset(plain, cli, tmp_path):
    bad = corrupted_copy(plain["dump"], tmp_path / "bad.h5", "activations/d1")
    expected = f"error: '{bad}': dataset /activations/d1 {CHECKSUM_WORDS}"
    r = cli("diff", bad, plain["dump"])
    assert r.exit_code == 1 and error_line(r) == expected
    r = cli("plot", bad, "--layer", "d1", "--hist", "-o", tmp_path / "h.png")
    assert r.exit_code == 1 and error_line(r) == expected
    assert not (tmp_path / "h.png").exists()
    with tensorprobe.open_dump(bad) as dump:
        np.testing.assert_array_equal(dump["d2"][:], h5py.File(plain["dump"], "r")["activations/d2"][:])
        with pytest.raises(DumpReadError) as e:
            dump["d1"][:]
        assert str(e.value) == expected[len("error: "):]
        with pytest.raises(DumpReadError):
            np.asarray(dump["d1"])


def test_merge_refuses_a_shard_whose_chunk_fails_its_checksum(plain, cli, tmp_path):
    parts = [tmp_path / p.name for p in plain["parts"]]
    for src, dst in zip(plain["parts"], parts):
        dst.write_bytes(src.read_bytes())
    flip_chunk_byte(parts[1], "activations/d2")
    r = cli("merge", "--copy", *parts, "-o", tmp_path / "all.h5")
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{parts[1]}': dataset /activations/d2 {CHECKSUM_WORDS}"
    assert not (tmp_path / "all.h5").exists()


def test_merge_copy_keeps_checksums_and_a_virtual_merge_names_the_damaged_shard(plain, cli, tmp_path):
    parts = [tmp_path / p.name for p in plain["parts"]]
    for src, dst in zip(plain["parts"], parts):
        dst.write_bytes(src.read_bytes())
    r = cli("merge", "--copy", *parts, "-o", tmp_path / "copied.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "copied.h5", "r") as f:
        assert all(f[f"activations/{n}"].fletcher32 for n in ("d1", "d2"))
    r = cli("merge", *parts, "-o", tmp_path / "virtual.h5")
    assert r.exit_code == 0, r.stderr
    # the shard's times kept: the merged dump's shard check takes it for unchanged (size and
    # mtime), and the damage surfaces when the virtual dataset reads that chunk
    flip_chunk_byte(parts[2], "activations/d1", keep_times=True)
    r = cli("diff", tmp_path / "virtual.h5", tmp_path / "copied.h5")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{tmp_path / 'virtual.h5'}': dataset /activations/d1 reads shard "
                             f"'part-2.h5', whose dataset /activations/d1 {CHECKSUM_WORDS}")
    # changed times: the shard's digest is computed again, and its reading names the shard
    os.utime(parts[2])
    r = cli("diff", tmp_path / "virtual.h5", tmp_path / "copied.h5")
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{parts[2]}': dataset /activations/d1 {CHECKSUM_WORDS}"


def test_a_dump_written_without_checksums_still_reads(plain, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHECKSUM", False)
    old = tmp_path / "old.h5"
    tensorprobe.dump(plain["model"], plain["x"], old, all_layers=True)
    monkeypatch.undo()
    with h5py.File(old, "r") as f:
        assert not f["activations/d1"].fletcher32
    r = cli("diff", old, plain["dump"], "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["match"] is True
    with tensorprobe.open_dump(old) as dump:
        np.testing.assert_array_equal(dump["d1"][:], h5py.File(plain["dump"], "r")["activations/d1"][:])
