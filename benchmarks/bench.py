"""Time and peak memory of `tensorprobe dump` against the naive recipe and the two floors.

    python benchmarks/bench.py [--size 224] [--n 32] [--runs 1] [--mem-size 64] [--mem-n 128,1024]

Workload: keras.applications.VGG16(weights=None, include_top=False) at SIZE x SIZE, N random
images in one .npy, layers block2_conv2 (write-heavy) and block5_pool (compute-heavy). Each
measurement runs in a fresh process; its peak RSS comes from os.wait4.

  (a) tensorprobe dump       the installed command, end to end
  (b) naive recipe           keras.Model(model.input, layer.output).predict(x), then one h5py write
  (c) compute floor          the same sub-model's forward pass alone, batch by batch, no writing
  (d) write floor            writing the same bytes with h5py alone, batch by batch
  load                       importing TensorFlow and loading the model (part of (a), (b), (c))

Memory: peak RSS of (a) on block2_conv2 for each N of --mem-n at --mem-size.
The default run takes a few minutes on 2 cores; the README quotes a larger one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PY = sys.executable
TENSORPROBE = str(Path(sys.executable).parent / "tensorprobe")
LAYERS = ("block2_conv2", "block5_pool")
BATCH = 32

PRELUDE = textwrap.dedent("""
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    t0 = time.perf_counter()
    import numpy as np, keras, tensorflow as tf, h5py
    model = keras.saving.load_model(sys.argv[1], compile=False)
    layer = model.get_layer(sys.argv[2])
    x = np.load(sys.argv[3], mmap_mode="r")
    t_load = time.perf_counter() - t0
""")

NAIVE = PRELUDE + textwrap.dedent("""
    t1 = time.perf_counter()
    sub = keras.Model(model.input, layer.output)
    y = sub.predict(np.asarray(x), batch_size=32, verbose=0)
    with h5py.File(sys.argv[4], "w") as f:
        f[sys.argv[2]] = y
    print(json.dumps({"load": t_load, "work": time.perf_counter() - t1}))
""")

COMPUTE = PRELUDE + textwrap.dedent("""
    t1 = time.perf_counter()
    sub = keras.Model(model.input, layer.output)
    f = tf.function(lambda t: sub(t, training=False),
                    input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32)])
    for i in range(0, len(x), 32):
        f(np.asarray(x[i:i + 32])).numpy()
    print(json.dumps({"load": t_load, "work": time.perf_counter() - t1}))
""")

WRITE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, h5py
    n, shape = int(sys.argv[1]), tuple(json.loads(sys.argv[2]))
    batch = np.random.default_rng(0).random((32, *shape), dtype=np.float32)
    t1 = time.perf_counter()
    with h5py.File(sys.argv[3], "w") as f:
        d = f.create_dataset("x", shape=(0, *shape), maxshape=(None, *shape), dtype="float32",
                             chunks=(max(1, min(32, (1 << 20) // batch[0].nbytes)), *shape))
        for i in range(0, n, 32):
            rows = batch[: min(32, n - i)]
            d.resize((i + len(rows), *shape))
            d[i:i + len(rows)] = rows
    print(json.dumps({"work": time.perf_counter() - t1}))
""")


def run(argv):
    """(wall seconds, peak RSS MiB, stdout) of a fresh process."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(map(str, argv))}")
    return wall, usage.ru_maxrss / 1024, out


def build(folder, size, n):
    script = textwrap.dedent(f"""
        import os; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, keras
        keras.utils.set_random_seed(0)
        keras.applications.VGG16(weights=None, include_top=False, input_shape=({size}, {size}, 3)).save(r"{folder}/vgg16.keras")
        np.save(r"{folder}/x.npy", np.random.default_rng(0).uniform(0, 255, ({n}, {size}, {size}, 3)).astype("float32"))
        m = keras.saving.load_model(r"{folder}/vgg16.keras")
        print({{l: list(m.get_layer(l).output.shape[1:]) for l in {LAYERS!r}}})
    """)
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])  # noqa: S307 - our own script's dict of shapes


def measure(folder, layer, shape, n, runs):
    model, x, out = f"{folder}/vgg16.keras", f"{folder}/x.npy", f"{folder}/out.h5"
    rows = {k: [] for k in ("dump", "naive", "compute", "write", "load", "dump_rss", "naive_rss")}
    for _ in range(runs):
        wall, rss, _ = run([TENSORPROBE, "dump", "-m", model, "-l", layer, "-q", "--overwrite", "-o", out, x])
        rows["dump"].append(wall)
        rows["dump_rss"].append(rss)
        wall, rss, _ = run([PY, "-c", NAIVE, model, layer, x, out])
        rows["naive"].append(wall)
        rows["naive_rss"].append(rss)
        _, _, text = run([PY, "-c", COMPUTE, model, layer, x])
        phases = json.loads(text)
        rows["compute"].append(phases["work"])
        rows["load"].append(phases["load"])
        _, _, text = run([PY, "-c", WRITE, str(n), json.dumps(shape), out])
        rows["write"].append(json.loads(text)["work"])
    return {k: statistics.median(v) for k, v in rows.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--mem-size", type=int, default=64)
    parser.add_argument("--mem-n", default="128,1024")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        shapes = build(folder, args.size, args.n)
        print(f"VGG16 at {args.size}x{args.size}, N={args.n}, batch {BATCH}, median of {args.runs} run(s); "
              f"{os.cpu_count()} CPUs")
        print(f"{'layer':<14}{'dump s':>9}{'naive s':>9}{'compute':>9}{'write':>8}{'load':>7}"
              f"{'dump/(load+compute)':>21}{'naive/dump':>12}{'dump MiB':>10}{'naive MiB':>11}")
        for layer in LAYERS:
            m = measure(folder, layer, shapes[layer], args.n, args.runs)
            print(f"{layer:<14}{m['dump']:>9.1f}{m['naive']:>9.1f}{m['compute']:>9.1f}{m['write']:>8.2f}"
                  f"{m['load']:>7.1f}{m['dump'] / (m['load'] + m['compute']):>21.2f}"
                  f"{m['naive'] / m['dump']:>12.2f}{m['dump_rss']:>10.0f}{m['naive_rss']:>11.0f}")

        help_wall = statistics.median(run([TENSORPROBE, "--help"])[0] for _ in range(5))
        print(f"tensorprobe --help: {help_wall:.2f} s")

    sizes = [int(v) for v in args.mem_n.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.mem_size, max(sizes))
        peaks = []
        for n in sizes:
            subprocess.run([PY, "-c", f"import numpy as np; x = np.load(r'{folder}/x.npy', mmap_mode='r'); "
                                      f"np.save(r'{folder}/x{n}.npy', x[:{n}])"], check=True)
            _, rss, _ = run([TENSORPROBE, "dump", "-m", f"{folder}/vgg16.keras", "-l", "block2_conv2", "-q",
                             "--overwrite", "-o", f"{folder}/out.h5", f"{folder}/x{n}.npy"])
            peaks.append(rss)
            print(f"peak RSS of dump, block2_conv2 at {args.mem_size}x{args.mem_size}, N={n}: {rss:.0f} MiB")
        print(f"peak RSS N={sizes[-1]} / N={sizes[0]}: {peaks[-1] / peaks[0]:.2f}")


if __name__ == "__main__":
    main()
