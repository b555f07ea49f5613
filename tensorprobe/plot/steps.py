"""`plot --over-steps`: one layer of a training file (ProbeCallback's) against the optimizer
step: its mean, std and zeros fraction, and its gradient's where the file records one."""

import functools

import numpy as np

from tensorprobe.errors import UnknownLayerError, UsageError
from tensorprobe.text import did_you_mean

SERIES = ("mean", "std", "zeros_fraction")


def over_steps(request):
    """What render() draws for --over-steps: a function of dpi -> figure."""
    from tensorprobe import store, trainfile
    from tensorprobe.plot import figures

    if request.samples or request.channels is not None:
        given = "--sample" if request.samples else "--channels"
        raise UsageError(f"{given}: --over-steps draws a layer's statistics over the steps; drop {given}")
    with store.open_dump(request.dump) as f, store.reading(request.dump):
        if not trainfile.is_training(f.attrs):
            raise UsageError(f"--over-steps: '{request.dump}' is a dump, not a training file "
                             "(tensorprobe.keras.ProbeCallback writes those)")
        paths = [p for p, _ in trainfile.layer_groups(f)]
        path = _resolve(request.layer, paths, request.dump)
        n = f["steps"].shape[0]
        if n == 0:
            raise UsageError(f"--over-steps: '{request.dump}' records no step yet")
        steps = f["steps"][:n]
        group = f["stats"][path]
        panels = [(name, group[name][:n], group[trainfile.GRADIENT + name][:n]
                   if trainfile.GRADIENT + name in group else None) for name in SERIES]
    title = [f"{path}   {n} step{'s' if n != 1 else ''} ({steps[0]} to {steps[-1]}) of {request.dump}",
             "activation" + (" (blue) and the loss's gradient with respect to it (orange)"
                             if panels[0][2] is not None else "") + " on the probe batch"]
    return functools.partial(figures.over_steps, np.asarray(steps), panels, title)


def _resolve(name, paths, dump):
    """The layer path --layer NAME means in a training file: a path or a unique suffix."""
    wanted = name.strip("/")
    if wanted in paths:
        return wanted
    candidates = [p for p in paths if p.endswith("/" + wanted)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UnknownLayerError(f"--layer '{name}' is ambiguous in '{dump}': it names {', '.join(candidates)}; "
                                "give the full path")
    raise UnknownLayerError(f"--layer '{name}': '{dump}' records no such layer"
                            f"{did_you_mean(wanted, paths) or '; it records ' + ', '.join(paths)}")
