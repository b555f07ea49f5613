"""Random and mutated bytes as inputs and model files: only clean errors, never a traceback.

Bounded: a few dozen examples per target, so the suite stays within minutes."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mutate(data, flips, cut):
    """Overwrite bytes at the given positions and optionally truncate."""
    data = bytearray(data)
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data[: max(1, len(data) - cut)])


def assert_clean(result):
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.exception)
    assert "Traceback" not in result.stderr
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


VALID_NPY = npy_bytes(np.zeros((2, 32, 32, 3), np.float32))
FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


@SETTINGS
@given(flips=FLIPS, cut=st.integers(0, 200), header_only=st.booleans())
def test_mutated_npy_inputs(cli, zoo, tmp_path, flips, cut, header_only):
    data = VALID_NPY
    if header_only:  # aim the flips at the header, where the parsing happens
        flips = [(p % 128, v) for p, v in flips]
    path = tmp_path / "fuzz.npy"
    path.write_bytes(mutate(data, flips, cut))
    out = tmp_path / "out.h5"
    out.unlink(missing_ok=True)
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "fc1", "-q", "-o", out, path)
    assert_clean(r)


@SETTINGS
@given(data=st.binary(min_size=0, max_size=2048), suffix=st.sampled_from([".npy", ".h5", ".keras"]))
def test_random_bytes_as_model_and_input(cli, zoo, tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    assert_clean(cli("layers", path))
    assert_clean(cli("dump", "-m", zoo["transfer.keras"], "-l", "fc1", "-q", "-o", tmp_path / "o.h5",
                     "--overwrite", path))


@SETTINGS
@given(flips=FLIPS, cut=st.integers(0, 50_000), which=st.sampled_from(["transfer.keras", "transfer.h5"]))
def test_mutated_model_files(cli, zoo, tmp_path, flips, cut, which):
    path = tmp_path / f"mutated{zoo[which].suffix}"
    path.write_bytes(mutate(zoo[which].read_bytes(), flips, cut))
    assert_clean(cli("layers", path))
