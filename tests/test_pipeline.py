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
    assert [line for line in r.stderr.splitlines() if line.startswith("skipped ")] == \
        [f"skipped {photos / 'b.png'}: {report['skipped'][0]['reason']}"]
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


def test_a_pair_whose_shape_fits_either_layout_takes_the_models_layout():
    """Channels = height = width: the shape cannot say NCHW from NHWC, so the pair takes the
    move the other pairs of the two models need (here A is channels-first)."""
    from tensorprobe.modelcompare import FIRST_TO_LAST, Comparison, parse_metric

    rng = np.random.default_rng(5)
    b_wide = rng.normal(size=(3, 4, 4, 8)).astype("float32")  # NHWC, unambiguous
    b_cube = rng.normal(size=(3, 4, 4, 4)).astype("float32")  # NHWC, C = H = W
    a_wide, a_cube = (np.ascontiguousarray(np.transpose(v, (0, 3, 1, 2))) for v in (b_wide, b_cube))
    matched = [(0, 0, "cube"), (1, 1, "wide")]  # the ambiguous pair first
    comparison = Comparison(matched, 3, parse_metric("allclose"))
    comparison.update([a_cube, a_wide], [b_cube, b_wide])
    records = comparison.pairs()
    assert [(r["path"], r["status"], r.get("layout")) for r in records] == \
        [("cube", "ok", FIRST_TO_LAST), ("wide", "ok", FIRST_TO_LAST)]
    assert records[0]["max_abs"] == 0.0
    # the same models without a pair that says the layout: the cube is compared as it is
    alone = Comparison([(0, 0, "cube")], 3, parse_metric("allclose"))
    alone.update([a_cube], [b_cube])
    assert alone.pairs()[0]["status"] == "differ" and "layout" not in alone.pairs()[0]
