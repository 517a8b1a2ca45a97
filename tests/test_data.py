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
