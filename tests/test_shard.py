"""dump --shard K/N, merge and --resume, through the real CLI. Every figure checked is
computed again here: row ranges from the rule, statistics with NumPy from the single dump's
data, fingerprints with hashlib from its /inputs/source."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import error_line
from tensorprobe.cli import cli as command

BIN = Path(sys.executable).parent / "tensorprobe"
N = 3


def run(*args, env=None):
    return CliRunner().invoke(command, [str(a) for a in args], env=env, catch_exceptions=True)


def dump_args(zoo, *extra):
    return ("dump", "-m", zoo["transfer.keras"], "-l", "vgg16/block2_conv1", "-l", "gap", "-l", "predictions",
            "-b", "1", "-q", *extra, zoo["images7.npy"])


@pytest.fixture(scope="module")
def job(zoo, tmp_path_factory):
    """A single dump of the 7 images and the same dump in 3 shards, merged."""
    folder = tmp_path_factory.mktemp("job")
    r = run(*dump_args(zoo, "-o", folder / "single.h5"))
    assert r.exit_code == 0, r.output
    for k in range(N):
        r = run(*dump_args(zoo, "--shard", f"{k}/{N}", "-o", folder / f"part-{k}.h5"))
        assert r.exit_code == 0, r.output
    r = run("merge", *(folder / f"part-{k}.h5" for k in (2, 0, 1)), "-o", folder / "all.h5")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == f"wrote {folder / 'all.h5'}: 7 rows from 3 shards (virtual)"
    return folder


def datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        for group in ("activations", "gradients"):
            if group in f:
                f[group].visititems(lambda name, obj, g=group: found.__setitem__(f"{g}/{name}", obj[()])
                                    if isinstance(obj, h5py.Dataset) else None)
    return found


def check_statistics(path, reference):
    """The merged file's statistics attributes against NumPy over the single dump's data."""
    with h5py.File(path, "r") as f:
        for name, data in reference.items():
            a = f[name].attrs
            x = data.astype(np.float64)
            np.testing.assert_allclose([a["min"], a["max"], a["mean"], a["std"]],
                                       [x.min(), x.max(), x.mean(), x.std()], rtol=1e-6, atol=1e-9)
            assert a["zeros_fraction"] == pytest.approx(np.count_nonzero(data == 0) / data.size, abs=1e-12)
            assert (a["nan_count"], a["inf_count"]) == (0, 0)
            flat = x.reshape(-1, x.shape[-1])
            for key, value in (("min", flat.min(0)), ("max", flat.max(0)), ("mean", flat.mean(0)),
                               ("std", flat.std(0))):
                np.testing.assert_allclose(a[f"channel_{key}"], value, rtol=1e-6, atol=1e-9, err_msg=name)


def sources(path):
    with h5py.File(path, "r") as f:
        return list(f["inputs/source"].asstr()[()])


def test_each_shard_takes_its_contiguous_rows_and_records_the_job(job):
    single = sources(job / "single.h5")
    fingerprint = hashlib.sha256("".join(s + "\n" for s in single).encode()).hexdigest()
    options = set()
    for k in range(N):
        start, stop = k * 7 // N, (k + 1) * 7 // N
        with h5py.File(job / f"part-{k}.h5", "r") as f:
            assert f.attrs["shard"] == f"{k}/{N}"
            assert list(f.attrs["shard_rows"]) == [start, stop]
            assert f.attrs["total_rows"] == 7 and f.attrs["samples"] == stop - start
            assert f.attrs["input_fingerprint"] == fingerprint
            options.add(f.attrs["options_fingerprint"])
        assert sources(job / f"part-{k}.h5") == single[start:stop]
    assert len(options) == 1


def test_merged_virtual_file_equals_the_single_dump(job, cli):
    single, merged = datasets(job / "single.h5"), datasets(job / "all.h5")
    assert sorted(merged) == sorted(single) and len(single) == 3
    for name in single:
        np.testing.assert_array_equal(merged[name], single[name], err_msg=name)
    with h5py.File(job / "all.h5", "r") as f:
        assert all(f[name].is_virtual for name in single)
        assert "shard" not in f.attrs and "shard_rows" not in f.attrs
        assert list(f.attrs["merged_from"]) == ["part-0.h5", "part-1.h5", "part-2.h5"]
        assert f.attrs["samples"] == 7 and f.attrs["complete"] and f.attrs["merge_mode"] == "virtual"
    assert sources(job / "all.h5") == sources(job / "single.h5")
    check_statistics(job / "all.h5", single)
    r = cli("diff", job / "single.h5", job / "all.h5")
    assert r.exit_code == 0, r.output
    r = cli("summary", "--json", job / "all.h5")
    assert r.exit_code == 0 and '"vgg16/block2_conv1"' in r.stdout
    r = cli("plot", job / "all.h5", "-l", "gap", "-o", job / "gap.png")
    assert r.exit_code == 0, r.output


def test_merged_folder_can_move(job, cli, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("all.h5", "part-0.h5", "part-1.h5", "part-2.h5"):
        shutil.copy(job / name, moved / name)
    single = datasets(job / "single.h5")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative to the merged file's folder, not to the working directory
    try:
        merged = datasets(moved / "all.h5")
    finally:
        os.chdir(cwd)
    for name in single:
        np.testing.assert_array_equal(merged[name], single[name])
    (moved / "part-1.h5").unlink()  # HDF5 alone would read its rows as zeros
    r = cli("summary", moved / "all.h5")
    assert r.exit_code == 1 and error_line(r) == (
        f"error: '{moved / 'all.h5'}' is a merged dump whose shard 'part-1.h5' is missing: "
        "the shards must stay beside it (merge --copy writes a self-contained file)")


def test_merge_copy_is_self_contained(job, cli, tmp_path):
    parts = []
    for k in range(N):
        shutil.copy(job / f"part-{k}.h5", tmp_path / f"part-{k}.h5")
        parts.append(tmp_path / f"part-{k}.h5")
    r = cli("merge", "--copy", *parts, "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.output
    for part in parts:
        part.unlink()
    single, merged = datasets(job / "single.h5"), datasets(tmp_path / "all.h5")
    with h5py.File(tmp_path / "all.h5", "r") as f:
        assert not any(f[name].is_virtual for name in single) and f.attrs["merge_mode"] == "copy"
    for name in single:
        np.testing.assert_array_equal(merged[name], single[name])
    check_statistics(tmp_path / "all.h5", single)
    assert cli("diff", job / "single.h5", tmp_path / "all.h5").exit_code == 0


def test_merge_refusals(job, cli, zoo, tmp_path):
    parts = [job / f"part-{k}.h5" for k in range(N)]
    out = tmp_path / "all.h5"
    r = cli("merge", parts[0], parts[2], "-o", out)
    assert r.exit_code == 1 and error_line(r) == "error: shard 1/3 missing (given 2 of 3)"
    shutil.copy(parts[1], tmp_path / "again.h5")
    r = cli("merge", *parts, tmp_path / "again.h5", "-o", out)
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{tmp_path / 'again.h5'}' is shard 1/3, like '{parts[1]}'"
    other = tmp_path / "other-1.h5"
    r = cli(*dump_args(zoo, "--shard", "1/3", "--reduce", "mean", "-o", other))
    assert r.exit_code == 0, r.output
    r = cli("merge", parts[0], other, parts[2], "-o", out)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{other}' is not a shard of the same dump as '{parts[0]}': "
                             "its model or options differ (options_fingerprint)")
    broken = tmp_path / "broken-2.h5"
    shutil.copy(parts[2], broken)
    with h5py.File(broken, "a") as f:
        f.attrs["complete"] = False
    r = cli("merge", parts[0], parts[1], broken, "-o", out)
    assert r.exit_code == 1 and error_line(r).startswith(f"error: '{broken}' is an incomplete dump")
    r = cli("merge", parts[0], job / "single.h5", "-o", out)
    assert r.exit_code == 1 and error_line(r) == (
        f"error: '{job / 'single.h5'}' is not a shard (no 'shard' attribute: it was not written by dump --shard)")
    assert not out.exists() and not list(tmp_path.glob(".all.h5*"))
    r = cli("merge", "-o", out)
    assert r.exit_code == 2


def test_resume_skips_a_complete_shard_and_refuses_a_foreign_file(job, cli, zoo, tmp_path):
    out = tmp_path / "part-0.h5"
    shutil.copy(job / "part-0.h5", out)
    before = out.read_bytes()
    r = cli(*dump_args(zoo, "--shard", "0/3", "--resume", "-o", out))
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == f"skipped: '{out}' is already this shard's complete output (--resume)"
    assert out.read_bytes() == before
    r = cli(*dump_args(zoo, "--shard", "0/3", "--resume", "--json", "-o", out))
    assert r.exit_code == 0 and json.loads(r.stdout)["samples"] == 7 * 1 // 3
    assert out.read_bytes() == before
    shutil.copy(job / "part-1.h5", out)
    r = cli(*dump_args(zoo, "--shard", "0/3", "--resume", "-o", out))
    assert r.exit_code == 2 and "is not this shard's complete output" in error_line(r)
    r = cli(*dump_args(zoo, "--shard", "0/3", "--resume", "--overwrite", "-o", out))
    assert r.exit_code == 0 and "skipped" not in r.stderr
    assert sources(out) == sources(job / "part-0.h5")


def test_shard_from_the_environment_and_bad_values(job, cli, zoo, tmp_path):
    out = tmp_path / "env.h5"
    r = cli(*dump_args(zoo, "-o", out), env={"TENSORPROBE_SHARD": "2/3"})
    assert r.exit_code == 0, r.output
    assert sources(out) == sources(job / "single.h5")[4:7]
    for value in ("3/3", "x", "1/0", "-1/2"):
        r = cli(*dump_args(zoo, "--shard", value, "-o", tmp_path / "bad.h5"))
        assert r.exit_code == 2 and error_line(r).startswith(f"error: --shard '{value}'"), r.output
    r = cli(*dump_args(zoo, "-o", tmp_path / "bad.h5"), env={"TENSORPROBE_SHARD": "5/4"})
    assert r.exit_code == 2 and error_line(r).startswith("error: TENSORPROBE_SHARD '5/4'")


def test_empty_shards_when_there_are_more_shards_than_rows(cli, zoo, tmp_path):
    common = ("dump", "-m", zoo["seq.keras"], "--all", "-b", "1", "-q", zoo["vec6.npy"])  # 5 rows
    assert cli(*common, "-o", tmp_path / "single.h5").exit_code == 0
    for k in range(6):
        r = cli(*common, "--shard", f"{k}/6", "-o", tmp_path / f"p{k}.h5")
        assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "p0.h5", "r") as f:  # rows [0, 0)
        assert f.attrs["samples"] == 0 and f.attrs["complete"] and list(f.attrs["shard_rows"]) == [0, 0]
    r = cli("merge", *(tmp_path / f"p{k}.h5" for k in range(6)), "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.output
    single = datasets(tmp_path / "single.h5")
    merged = datasets(tmp_path / "all.h5")
    assert sorted(merged) == sorted(single)
    for name in single:
        np.testing.assert_array_equal(merged[name], single[name])
    check_statistics(tmp_path / "all.h5", single)


def test_concurrent_shard_processes_then_merge_and_diff(job, zoo, tmp_path):
    """The README's recipes: shard 0 as a Slurm array task, 1 as a Kubernetes Indexed Job pod,
    2 with --shard as GNU parallel gives it; all three at once, as installed scripts."""
    args = " ".join(f"'{a}'" for a in dump_args(zoo)[1:])
    tensorprobe = f"'{BIN}' dump {args}"
    lines = [
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"},
         f"export TENSORPROBE_SHARD=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; {tensorprobe} -o part-$SLURM_ARRAY_TASK_ID.h5"),
        ({"JOB_COMPLETION_INDEX": "1"},
         f"TENSORPROBE_SHARD=$JOB_COMPLETION_INDEX/3 {tensorprobe} -o part-$JOB_COMPLETION_INDEX.h5"),
        ({}, f"{tensorprobe} --shard 2/3 -o part-2.h5"),
    ]
    procs = [subprocess.Popen(["bash", "-c", line], cwd=tmp_path, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for env, line in lines]
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    r = subprocess.run(["bash", "-c", f"'{BIN}' merge part-*.h5 -o all.h5 && '{BIN}' diff '{job / 'single.h5'}' all.h5"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("match: 3 of 3 datasets")
    with h5py.File(tmp_path / "all.h5", "r") as f:
        assert list(f.attrs["merged_from"]) == ["part-0.h5", "part-1.h5", "part-2.h5"]


def test_statistics_merge_exactly_with_nan_and_inf(cli, zoo, tmp_path):
    x = np.load(zoo["vec6.npy"])
    x[1, 2], x[3, 0] = np.nan, np.inf
    np.save(tmp_path / "x.npy", x)
    common = ("dump", "-m", zoo["seq.keras"], "--all", "-b", "1", "-q", tmp_path / "x.npy")
    assert cli(*common, "-o", tmp_path / "single.h5").exit_code == 0
    for k in range(3):
        assert cli(*common, "--shard", f"{k}/3", "-o", tmp_path / f"p{k}.h5").exit_code == 0
    r = cli("merge", *(tmp_path / f"p{k}.h5" for k in range(3)), "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.output
    single = datasets(tmp_path / "single.h5")
    with h5py.File(tmp_path / "all.h5", "r") as f:
        for name, data in single.items():
            a, finite = f[name].attrs, np.isfinite(data)
            assert (a["nan_count"], a["inf_count"]) == (np.isnan(data).sum(), np.isinf(data).sum())
            assert a["nan_count"] + a["inf_count"] > 0
            assert a["first_nonfinite_sample"] == np.flatnonzero(~finite.all(axis=1))[0]
            values = data[finite].astype(np.float64)
            np.testing.assert_allclose([a["min"], a["max"], a["mean"], a["std"]],
                                       [values.min(), values.max(), values.mean(), values.std()], rtol=1e-6)
            for c in range(data.shape[1]):
                column = data[:, c][finite[:, c]].astype(np.float64)
                assert a["channel_count"][c] == len(column)
                np.testing.assert_allclose([a["channel_mean"][c], a["channel_std"][c]],
                                           [column.mean(), column.std()], rtol=1e-6, atol=1e-12)


def test_image_shards_never_open_the_files_outside_their_rows(cli, zoo, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a0.png").write_bytes(b"not a png")  # row 0: outside shard 1/2's rows [2, 5)
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"a{i}.png")
    common = ("dump", "-m", zoo["transfer.keras"], "-l", "gap", "-b", "1", "-q", folder)
    r = cli(*common, "--shard", "1/2", "-o", tmp_path / "p1.h5")
    assert r.exit_code == 0, r.output
    assert sources(tmp_path / "p1.h5") == [str(folder / f"a{i}.png") for i in (2, 3, 4)]
    r = cli(*common, "--skip-bad", "-o", tmp_path / "single.h5")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(datasets(tmp_path / "p1.h5")["activations/gap"],
                                  datasets(tmp_path / "single.h5")["activations/gap"][1:])
    r = cli(*common, "--shard", "0/2", "-o", tmp_path / "p0.h5")
    assert r.exit_code == 1 and "a0.png" in error_line(r)


def test_shards_take_their_rows_of_the_labels(cli, zoo, tmp_path):
    labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0, 1]]  # a shard given rows 0.. would differ
    np.save(tmp_path / "labels.npy", labels)
    common = ("dump", "-m", zoo["transfer.keras"], "-l", "fc1", "--gradients", "--target", "loss:mse",
              "--labels", tmp_path / "labels.npy", "-b", "1", "-q", zoo["images7.npy"])
    assert cli(*common, "-o", tmp_path / "single.h5").exit_code == 0
    for k in range(N):
        r = cli(*common, "--shard", f"{k}/{N}", "-o", tmp_path / f"p{k}.h5")
        assert r.exit_code == 0, r.output
    r = cli("merge", "--copy", *(tmp_path / f"p{k}.h5" for k in range(N)), "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.output
    single, merged = datasets(tmp_path / "single.h5"), datasets(tmp_path / "all.h5")
    assert sorted(merged) == ["activations/fc1", "gradients/fc1"]
    for name in single:
        np.testing.assert_array_equal(merged[name], single[name])
    check_statistics(tmp_path / "all.h5", single)
