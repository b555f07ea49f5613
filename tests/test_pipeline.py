"""`compare` runs through the dump's read / compute / write loop: --skip-bad passes over the
same bad files as in `dump`, and --save-a holds exactly the rows kept."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, error_line

TRANSFER = ROOT / "sample_models" / "transfer.keras"
TWEAKED = ROOT / "sample_models" / "transfer_tweaked.keras"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three 32x32 RGB PNGs (lossless: their pixels are what the model gets) around a file
    named .png that is no image."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for name, image in zip(("a.png", "c.png", "d.png"), pixels):
        Image.fromarray(image).save(folder / name)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    return folder, pixels.astype("float32")


def _reference(model_path, layer, images):
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    inner = model.get_layer("vgg16")
    probe = keras.Model(inner.inputs, inner.get_layer(layer).output)
    return np.asarray(probe(images))


def test_compare_skips_the_bad_file_and_saves_the_kept_rows(cli, folder, tmp_path):
    photos, pixels = folder
    saved = tmp_path / "a.h5"
    r = cli("compare", TRANSFER, TWEAKED, photos, "--skip-bad", "--match", "block2_conv1", "--save-a", saved,
            "--json")
    assert r.exit_code == 1, r.stderr  # the tweaked weight is in block2_conv1
    report = json.loads(r.stdout)
    assert report["samples"] == 3
    assert [s["path"] for s in report["skipped"]] == [str(photos / "b.png")]
    assert report["first_divergence"] == "vgg16/block2_conv1"
    with h5py.File(saved, "r") as f:
        assert f.attrs["complete"] and f.attrs["samples"] == 3
        assert list(f["inputs/source"].asstr()[()]) == [str(photos / n) for n in ("a.png", "c.png", "d.png")]
        assert [row[0] for row in f["inputs/skipped"].asstr()[()]] == [str(photos / "b.png")]
        values = f["activations/vgg16/block2_conv1"][()]
    np.testing.assert_allclose(values, _reference(TRANSFER, "block2_conv1", pixels), rtol=1e-5, atol=1e-4)


def test_compare_without_skip_bad_names_the_bad_file(cli, folder, tmp_path):
    photos, _ = folder
    r = cli("compare", TRANSFER, TWEAKED, photos, "--match", "block2_conv1", "--save-a", tmp_path / "a.h5")
    assert r.exit_code == 1
    assert error_line(r).startswith(f"error: {photos / 'b.png'}: not a readable image")
    assert not (tmp_path / "a.h5").exists()


def test_api_compare_takes_skip_bad(folder):
    import tensorprobe

    photos, pixels = folder
    report = tensorprobe.compare(TRANSFER, TRANSFER, photos, match="fc1", skip_bad=True)
    assert report["match"] and report["samples"] == 3 and len(report["skipped"]) == 1
