"""tensorprobe: list the layers of a Keras/TensorFlow model and dump intermediate activations.

The Python API (TensorFlow is imported only once a model is loaded):

    import tensorprobe
    model = tensorprobe.load("model.keras")              # or a keras.Model, a SavedModel folder
    model.layers()                                      # what `tensorprobe layers --json` prints
    acts = tensorprobe.activations(model, x, layers=["vgg16/block1_conv2"])   # {name: array}
    tensorprobe.dump(model, "photos/", "acts.h5", match="conv")               # the CLI's dump
    with tensorprobe.open_dump("acts.h5") as f: f["vgg16/block1_conv2"][:4]
    tensorprobe.diff("a.h5", "b.h5", atol=1e-4)["first_difference"]
    tensorprobe.compare("model.keras", "model_export/", x)["first_divergence"]
    sub = tensorprobe.submodel(keras_model, layers=["vgg16/block1_conv2"])   # {name: tensor}
    callback = tensorprobe.keras.ProbeCallback(layers=["fc1"], x=probe_batch)  # for model.fit
    tensorprobe.run(model, x, edits={"fc1": tensorprobe.edits.zero()}).outputs   # interventions
    tensorprobe.nanhunt("model.keras", x, backward=True)["forward"]["culprit"]   # the first NaN layer
    tensorprobe.validate("acts.h5")["first_mismatch"]                            # a dump replayed
"""

from tensorprobe import edits
from tensorprobe.api import (DumpFile, Model, activations, compare, diff, dump, load, nanhunt, open_dump, patch,
                             run, submodel, validate)
from tensorprobe.errors import TensorprobeError
from tensorprobe.version import __version__

__all__ = ["load", "activations", "dump", "run", "patch", "edits", "submodel", "open_dump", "diff", "compare",
           "nanhunt", "validate", "Model",
           "DumpFile", "TensorprobeError",
           "__version__"]
