"""MNIST loading without the network: embedded subset, npz and IDX paths, ART's cache."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from art_jacreg import data
from art_jacreg.data import load_mnist


@pytest.fixture(autouse=True)
def no_art_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data, "_art_cache_file", lambda: None)


def test_embedded_subset_is_stratified_deterministic_and_in_art_format() -> None:
    (x_train, y_train), (x_test, y_test), lo, hi = load_mnist()
    assert (lo, hi) == (0.0, 1.0)
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.float32
    assert 0.0 <= x_train.min() and x_train.max() == 1.0
    assert np.array_equal(y_train.sum(axis=0), np.full(10, 400.0))
    assert np.array_equal(y_test.sum(axis=0), np.full(10, 100.0))
    assert np.all(y_train.sum(axis=1) == 1)
    # No digit is in both splits.
    train_rows = {row.tobytes() for row in x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(1000, -1))
    again = load_mnist()
    assert np.array_equal(again[0][0], x_train) and np.array_equal(again[1][1], y_test)
    other = load_mnist(seed=1)
    assert not np.array_equal(other[1][0], x_test)


def _fake_mnist(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def test_npz_path(tmp_path: Path) -> None:
    arrays = _fake_mnist()
    np.savez(tmp_path / "mnist.npz", **arrays)
    (x_train, y_train), (x_test, y_test), _, _ = load_mnist(tmp_path / "mnist.npz")
    assert x_train.shape == (20, 1, 28, 28) and x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(x_train[:, 0], arrays["x_train"] / 255.0, rtol=1e-6)
    assert np.array_equal(y_test.argmax(axis=1), arrays["y_test"])


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path: Path, compress: bool) -> None:
    arrays = _fake_mnist()
    for key, stem in data._IDX_FILES.items():
        _write_idx(tmp_path / (stem + (".gz" if compress else "")), arrays[key], compress)
    (x_train, y_train), (x_test, _), _, _ = load_mnist(tmp_path)
    np.testing.assert_allclose(x_train[:, 0], arrays["x_train"] / 255.0, rtol=1e-6)
    assert np.array_equal(y_train.argmax(axis=1), arrays["y_train"])
    assert x_test.shape == (10, 1, 28, 28)


def test_art_cache_is_used_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", **_fake_mnist(30, 5))
    monkeypatch.setattr(data, "_art_cache_file", lambda: tmp_path / "mnist.npz")
    (x_train, _), (x_test, _), _, _ = load_mnist()
    assert len(x_train) == 30 and len(x_test) == 5


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="`path` does not exist"):
        load_mnist(tmp_path / "missing.npz")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="npz"):
        load_mnist(tmp_path / "data.txt")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="lacks"):
        load_mnist(tmp_path / "partial.npz")
    with pytest.raises(FileNotFoundError, match="IDX|idx"):
        load_mnist(tmp_path)


def _save(tmp_path: Path, **changes: np.ndarray) -> Path:
    arrays = {**_fake_mnist(), **changes}
    np.savez(tmp_path / "m.npz", **arrays)
    return tmp_path / "m.npz"


@pytest.mark.parametrize(
    "x_train, message",
    [
        (np.zeros((20, 3, 28, 28), np.uint8), r"`x_train` in .*m.npz has shape \(20, 3, 28, 28\); expected grayscale"),
        (np.zeros((20, 28, 27), np.uint8), r"has shape \(20, 28, 27\)"),
        (np.zeros((0, 28, 28), np.uint8), "holds no images"),
        (np.zeros((20, 28, 28), np.int64), "has dtype int64; expected uint8 pixels 0..255"),
        (np.full((20, 28, 28), 255.0), r"holds floats in \[255, 255\]; expected pixels in \[0, 1\]"),
        (np.random.default_rng(0).standard_normal((20, 784)), r"holds floats in \[-.*Standardised"),
        (np.full((20, 784), np.nan, np.float32), "contains NaN or inf"),
    ],
)
def test_images_of_wrong_shape_dtype_or_range_are_refused(tmp_path: Path, x_train, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_mnist(_save(tmp_path, x_train=x_train))


def test_accepted_image_layouts_and_value_conventions(tmp_path: Path) -> None:
    pixels = _fake_mnist()["x_train"]  # uint8 (20, 28, 28)
    expected = pixels[:, None] / 255.0
    for x in (pixels, pixels[:, None], pixels[..., None], pixels.reshape(20, 784)):
        (x_train, _), _, _, _ = load_mnist(_save(tmp_path, x_train=x))
        np.testing.assert_allclose(x_train, expected, rtol=1e-6)
    floats = (pixels / 255.0).astype(np.float64)  # already in [0, 1]: kept, not divided again
    (x_train, _), _, _, _ = load_mnist(_save(tmp_path, x_train=floats))
    np.testing.assert_allclose(x_train, expected, rtol=1e-6)
    dark = np.full((20, 28, 28), 0.5, np.float32)  # max <= 1: never rescaled
    (x_train, _), _, _, _ = load_mnist(_save(tmp_path, x_train=dark))
    assert np.all(x_train == 0.5)


@pytest.mark.parametrize(
    "y_train, message",
    [
        (np.arange(19) % 10, "`y_train` in .* has 19 labels but there are 20 images"),
        (np.full(20, 10), r"labels out of range: expected values in \[0, 9\], got min 10 and max 10"),
        (np.full(20, -1), "labels out of range"),
        (np.full(20, 2.5), "non-integer labels"),
        (np.zeros((20, 10)), "not one-hot"),
        (-np.eye(10)[np.arange(20) % 10], "not one-hot"),
        (np.full((20, 10), 0.1), "not one-hot"),
        (np.zeros((20, 3)), r"has shape \(20, 3\).*expected class indices"),
        (np.array(["a"] * 20), "expected class indices"),
    ],
)
def test_labels_that_are_wrong_are_refused(tmp_path: Path, y_train, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_mnist(_save(tmp_path, y_train=y_train))


def test_one_hot_and_integral_float_labels_are_accepted(tmp_path: Path) -> None:
    labels = _fake_mnist()["y_train"]
    for y in (np.eye(10)[labels], np.eye(10, dtype=bool)[labels], labels.astype(np.float32)):
        (_, y_train), _, _, _ = load_mnist(_save(tmp_path, y_train=y))
        assert np.array_equal(y_train.argmax(1), labels)


def test_truncated_or_corrupt_files_give_one_clear_error_naming_the_file(tmp_path: Path) -> None:
    good = _save(tmp_path).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("this is not a zip archive")
    for path in (truncated, not_zip):
        with pytest.raises(ValueError) as info:
            load_mnist(path)
        message = str(info.value)
        assert str(path) in message and "truncated or corrupt" in message, message
        assert "allow_pickle" not in message and len(message.splitlines()) == 1

    arrays = _fake_mnist()
    for key, stem in data._IDX_FILES.items():
        _write_idx(tmp_path / (stem + ".gz"), arrays[key], compress=True)
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-20])  # a download cut short
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz cannot be read \(truncated or corrupt"):
        load_mnist(tmp_path)
    victim.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz cannot be read"):
        load_mnist(tmp_path)
