"""Build the sample models deterministically (fixed seeds) into a folder.

    python sample_models/build.py [FOLDER]     (default: this script's folder)
    python sample_models/build.py --savedmodel DIR


Writes:
  vgg_small.keras   a small VGG-style model with VGG16's layer names, on 32x32 RGB images
  transfer.keras    a transfer-learning model: vgg_small, frozen, nested as the layer
                    `vgg16`, under a new classifier head (GlobalAveragePooling, Dense,
                    BatchNormalization, Dropout, Dense softmax)
  transfer.h5       the same model in Keras 3's HDF5 format
  transfer_tweaked.keras
                    transfer.keras with one weight moved (a kernel value of the nested
                    layer vgg16/block2_conv1, +0.5), for `tensorprobe diff`'s examples
  input.npy         4 sample images, float32 in [0, 255], shape (4, 32, 32, 3)
  subclassed.keras  a subclassed model of custom_layers.py (load with --custom-objects)
  vectors.npy       3 sample vectors for it, shape (3, 6)

  images/           5 small images of known content for the input examples: PNG (RGB, gray,
                    RGBA), JPEG and BMP, of sizes other than 32x32, one in a subfolder
  two_inputs.keras  a model with two inputs: `image` (32, 32, 3) and `meta` (4,)
  two_inputs.npz    3 samples for it, keys `image` and `meta`
  meta.npy          5 `meta` rows, one per file in images/
  bert_tiny.keras   a two-block BERT encoder built with keras-hub's BertBackbone (random
                    weights; loading it needs keras-hub)
  tokens.npz        3 token sequences for it, padded to 8: token_ids, segment_ids, padding_mask

    python sample_models/build.py FOLDER --inputs-only   writes only the input examples

The .keras files are byte-for-byte reproducible: Keras writes the time of saving
(metadata.json's `date_saved`, the zip entry of the weights) and Python object ids
(`shared_object_id` in config.json) into them; `save()` below replaces those with fixed values.
The other files are reproducible as written.

With --savedmodel, exports transfer.keras (from this script's folder) with Keras 3's
`model.export()` as the SavedModel folder DIR: a graph with a `serving_default` signature.
It is not committed; `make demo` builds it in a temporary folder.
"""

import importlib.util
import os
import re
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __name__ == "__main__":  # run as a script: keep TensorFlow's start-up log lines away
    from tensorprobe.console import quiet_native_stderr

    _QUIET = quiet_native_stderr()  # for the whole run; the process ends with the script
    _QUIET.__enter__()

import keras  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
CLASSES = 5


def vgg_small(input_shape=IMAGE_SHAPE):
    """VGG16's layer structure and names, without the top, at a size that fits in kilobytes."""
    L = keras.layers
    inputs = keras.Input(input_shape, name="input_layer")
    x = inputs
    for block, (filters, convs) in enumerate([(8, 2), (16, 2), (16, 3)], start=1):
        for i in range(1, convs + 1):
            x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv{i}")(x)
        x = L.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="vgg16")


def transfer(base):
    """A classifier head on a frozen base, called in inference mode, as in Keras' guide."""
    L = keras.layers
    base.trainable = False
    inputs = keras.Input(base.inputs[0].shape[1:], name="image")
    x = base(inputs, training=False)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(12, activation="relu", name="fc1")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Dropout(0.5, name="dropout")(x)
    outputs = L.Dense(CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="transfer")


def build(folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    base = vgg_small()
    save(base, folder / "vgg_small.keras")
    model = transfer(base)
    # Non-trivial BatchNormalization statistics, so inference mode visibly matters.
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(0, 0.5, 12).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 12).astype("float32"))
    save(model, folder / "transfer.keras")
    save(model, folder / "transfer.h5")
    images = rng.uniform(0, 255, (4, *IMAGE_SHAPE)).astype("float32")
    np.save(folder / "input.npy", images)
    conv = model.get_layer("vgg16").get_layer("block2_conv1")
    kernel, bias = conv.get_weights()
    kernel[1, 1, 0, 0] += 0.5
    conv.set_weights([kernel, bias])
    save(model, folder / "transfer_tweaked.keras")
    custom = _custom_layers()
    keras.utils.set_random_seed(0)
    sub = custom.Subclassed(5, name="subclassed")
    sub(np.zeros((1, 6), "float32"))
    save(sub, folder / "subclassed.keras")
    np.save(folder / "vectors.npy", rng.normal(size=(3, 6)).astype("float32"))
    build_input_examples(folder)
    bert_tiny(folder)
    return folder


def bert_tiny(folder):
    """A two-block BERT encoder from keras-hub's constructor, random weights (no download),
    and 3 tokenised sequences for it, padded to 8 (keys token_ids, segment_ids, padding_mask)."""
    import keras_hub

    keras.utils.set_random_seed(0)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16, name="bert_tiny",
    )
    save(bert, folder / "bert_tiny.keras")
    rng = np.random.default_rng(0)
    lengths = np.array([8, 6, 4])
    mask = (np.arange(8)[None] < lengths[:, None]).astype("int32")
    np.savez(folder / "tokens.npz", token_ids=rng.integers(1, 100, (3, 8)).astype("int32") * mask,
             segment_ids=np.zeros((3, 8), "int32"), padding_mask=mask)


FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
FIXED_DATE_SAVED = "1980-01-01@00:00:00"


def save(model, path):
    """model.save(path); a .keras file is then made reproducible (see the module's docstring)."""
    path = Path(path)
    model.save(path)
    if path.suffix == ".keras":
        reproducible_keras_file(path)


def reproducible_keras_file(path):
    """Rewrite the .keras zip at `path` with a fixed `date_saved`, `shared_object_id`s numbered
    1, 2, ... in order of appearance (they only tie the uses of one shared object together) and
    every entry dated FIXED_TIME; the entries, their order and compression are kept."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    ids = {}

    def renumber(match):
        return f'"shared_object_id": {ids.setdefault(match.group(1), len(ids) + 1)}'

    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = re.sub(rb'"date_saved": "[^"]*"', f'"date_saved": "{FIXED_DATE_SAVED}"'.encode(), data)
            elif info.filename == "config.json":
                data = re.sub(r'"shared_object_id": (\d+)', renumber, data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, FIXED_TIME)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            z.writestr(fixed, data)
    os.replace(tmp, path)


def _custom_layers():
    """custom_layers.py, under a module name Keras cannot import by itself, so that the saved
    model needs --custom-objects as a user's model would."""
    spec = importlib.util.spec_from_file_location("sample_custom_layers", Path(__file__).parent / "custom_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def savedmodel(folder):
    """Export the committed transfer.keras as a SavedModel folder (Keras 3 `model.export()`)."""
    model = keras.saving.load_model(Path(__file__).parent / "transfer.keras", compile=False)
    model.export(str(folder), verbose=False)
    return Path(folder)




def build_input_examples(folder):
    """The sample images, the two-input model and its inputs (deterministic)."""
    folder = Path(folder)
    sample_images(folder / "images")
    keras.utils.set_random_seed(4)
    save(two_inputs(), folder / "two_inputs.keras")
    rng = np.random.default_rng(4)
    np.savez(folder / "two_inputs.npz", image=rng.uniform(0, 255, (3, *IMAGE_SHAPE)).astype("float32"),
             meta=rng.normal(size=(3, 4)).astype("float32"))
    np.save(folder / "meta.npy", rng.normal(size=(5, 4)).astype("float32"))


def sample_images(folder):
    """Patterns, not noise (they compress to a few KB), written with TensorFlow's encoders and,
    for BMP, which TensorFlow cannot write, by hand."""
    import tensorflow as tf

    (folder / "more").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:48, 0:64]
    gradient = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    (folder / "gradient.png").write_bytes(tf.io.encode_png(gradient).numpy())
    yy, xx = np.mgrid[0:40, 0:40]
    r = np.hypot(yy - 20, xx - 20)
    rings = np.stack([(np.sin(r / 2) + 1) * 127.5, (np.cos(r / 3) + 1) * 127.5, 255 - r * 6], -1)
    (folder / "rings.jpg").write_bytes(tf.io.encode_jpeg(rings.clip(0, 255).astype(np.uint8), quality=90).numpy())
    yy, xx = np.mgrid[0:32, 0:32]
    checker = (((yy // 4 + xx // 4) % 2) * 255).astype(np.uint8)[..., None]
    (folder / "checker_gray.png").write_bytes(tf.io.encode_png(checker).numpy())
    yy, xx = np.mgrid[0:24, 0:36]
    stripes = np.stack([(xx % 6 < 3) * 255, yy * 10, np.full_like(xx, 90)], -1).astype(np.uint8)
    (folder / "stripes.bmp").write_bytes(_bmp(stripes))
    yy, xx = np.mgrid[0:36, 0:28]
    dots = np.stack([xx * 9, yy * 7, np.full_like(xx, 200), ((yy % 9 < 5) & (xx % 7 < 4)) * 255], -1)
    (folder / "more" / "dots.png").write_bytes(tf.io.encode_png(dots.astype(np.uint8)).numpy())


def _bmp(rgb):
    """A 24-bit BMP: bottom-up rows of BGR pixels, each row padded to 4 bytes."""
    height, width, _ = rgb.shape
    row = width * 3 + (-width * 3) % 4
    pixels = b"".join(
        rgb[y, :, ::-1].tobytes() + b"\0" * (row - width * 3) for y in range(height - 1, -1, -1)
    )
    header = b"BM" + (54 + len(pixels)).to_bytes(4, "little") + b"\0" * 4 + (54).to_bytes(4, "little")
    info = b"".join(v.to_bytes(4, "little", signed=True) for v in (40, width, height))
    info += (1).to_bytes(2, "little") + (24).to_bytes(2, "little")
    info += b"".join(v.to_bytes(4, "little") for v in (0, len(pixels), 2835, 2835, 0, 0))
    return header + info + pixels


def two_inputs():
    """An image and a vector of 4 measurements, merged before the classifier."""
    L = keras.layers
    image = keras.Input(IMAGE_SHAPE, name="image")
    meta = keras.Input((4,), name="meta")
    x = L.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    m = L.Dense(4, activation="relu", name="meta_fc")(meta)
    merged = L.Concatenate(name="merged")([x, m])
    return keras.Model([image, meta], L.Dense(3, name="out")(merged), name="two_inputs")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--savedmodel":
        savedmodel(sys.argv[2])
    else:
        args = [a for a in sys.argv[1:] if a != "--inputs-only"]
        target = args[0] if args else Path(__file__).parent
        if "--inputs-only" in sys.argv:
            build_input_examples(target)
        else:
            build(target)
