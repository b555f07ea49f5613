"""The overhead of tensorprobe.keras.ProbeCallback on `model.fit`.

    python benchmarks/training_overhead.py [--steps 600] [--batch 32] [--probe 32] [--runs 3]

Workload: a small CNN (Conv2D 16 and 32 3x3 on 32x32x3, max pooling, Dense 64, Dense 10,
about 0.5 M parameters), SGD, jit_compile on (Keras' default), STEPS optimizer steps of BATCH
random images in one epoch. The callback records the four layers' statistics and histograms
on a probe batch of PROBE images, and, in a second set of runs, also the gradients of the loss
with respect to them. Each configuration's time is the median over RUNS fits of the same
compiled model (a first, untimed fit compiles the train function and the probe function),
in wall-clock time and in the process's CPU time (all threads: steadier on a shared machine),
printed as JSON with the overhead against the fit without callback, and the cost of one
record beyond the first (the difference from a fit that records only at the start, over the
records added).
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--probe", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    import tensorprobe.keras as tk

    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((32, 32, 3)), L.Conv2D(16, 3, activation="relu", name="conv1"), L.MaxPooling2D(name="pool1"),
        L.Conv2D(32, 3, activation="relu", name="conv2"), L.MaxPooling2D(name="pool2"), L.Flatten(name="flat"),
        L.Dense(64, activation="relu", name="fc"), L.Dense(10, name="logits")], name="small_cnn")
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.steps * args.batch,))
    layers = ["conv1", "conv2", "fc", "logits"]
    folder = tempfile.mkdtemp()

    def fit(callback=None):
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=[callback] if callback else [])
        return time.perf_counter() - start, time.process_time() - cpu

    count = [0]

    def probe(every, gradients):
        count[0] += 1
        return tk.ProbeCallback(layers=layers, x=x[:args.probe], y=y[:args.probe] if gradients else None,
                                every=every, gradients=gradients, output=os.path.join(folder, f"{count[0]}.h5"))

    fit(probe(100, True))  # compiles the train function and warms the probe's code paths
    never = 10 ** 9  # one record, at the start: the set-up (the walk, tracing, XLA) and a first record
    configurations = [("none", None, False), ("start only", never, False)] + \
        [(f"every={e}", e, False) for e in (1, 10, 100)] + \
        [("start only gradients", never, True)] + [(f"every={e} gradients", e, True) for e in (1, 10, 100)]
    times = {name: [] for name, _, _ in configurations}
    for _ in range(args.runs):  # interleaved, so a change in the machine's load touches every one
        for name, every, gradients in configurations:
            times[name].append(fit(probe(every, gradients) if every else None))
    result = {"steps": args.steps, "batch": args.batch, "probe_rows": args.probe, "parameters": model.count_params(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    for clock, which in (("wall", 0), ("cpu", 1)):  # cpu: the process's CPU time, all threads
        median = {k: statistics.median(t[which] for t in v) for k, v in times.items()}
        result[f"{clock}_s"] = {k: round(v, 3) for k, v in median.items()}
        result[f"{clock}_overhead_percent"] = {k: round(100 * (v / median["none"] - 1), 1) for k, v in median.items()
                                               if k != "none"}
        result[f"{clock}_ms_per_record"] = {
            k: round(1000 * (median[k] - median["start only gradients" if g else "start only"]) / (args.steps // e), 2)
            for k, e, g in configurations if e and e < never}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
