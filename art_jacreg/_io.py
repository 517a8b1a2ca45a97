"""Atomic file writes and output-path checks, used for every file the package writes.

A file is written to a temporary file with a unique name in the same folder, flushed to disk (``fsync``) and then
moved over the target with :func:`os.replace`. Readers therefore see either the old file or the complete new one,
never a partial file; concurrent writers into the same path never collide on the temporary name (the last
``os.replace`` wins); and a write that fails leaves the old file intact and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_savefig",
    "check_output_file",
    "check_output_dir",
]

_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """Permissions of a new file under the process umask (``mkstemp`` alone would give ``0o600``)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an exception it is removed.

    :param path: The file to write.
    :param mode: ``"w"`` (text) or ``"wb"`` (binary).
    :param encoding: Text encoding (ignored in binary mode).
    :param newline: Newline translation for text mode (as in :func:`open`).
    :return: A context manager yielding the open temporary file.
    :raises ValueError: If ``mode`` is not ``"w"`` or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb', got {mode!r}.")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically.

    :param path: The file.
    :param text: Its new content.
    :param encoding: Text encoding.
    """
    with atomic_open(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    :param path: The file.
    :param data: Its new content.
    """
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, payload: Any, **dump_kwargs: Any) -> None:
    """Serialise ``payload`` as JSON into ``path`` atomically (serialised first: a failing ``dump`` writes nothing).

    :param path: The file.
    :param payload: A JSON-serialisable object.
    :param dump_kwargs: Keyword arguments of :func:`json.dumps` (``indent``, ``sort_keys``, ...).
    """
    atomic_write_text(path, json.dumps(payload, **dump_kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """:func:`torch.save` ``obj`` into ``path`` atomically.

    :param obj: What to save (e.g. a ``state_dict``).
    :param path: The file.
    """
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_savefig(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure into ``path`` atomically; the format follows the suffix unless ``format`` is given.

    :param fig: A :class:`matplotlib.figure.Figure`.
    :param path: The file.
    :param savefig_kwargs: Keyword arguments of ``Figure.savefig`` (``dpi``, ...).
    """
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".").lower() or "png")
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, **savefig_kwargs)


def _probe_writable(folder: Path) -> str | None:
    """``None`` if a file can be created in ``folder`` (tried for real: root ignores permission bits), else why not."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".art-jacreg-probe.", dir=folder)
    except OSError as err:
        return err.strerror or type(err).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_output_file(path: str | os.PathLike, what: str, fail: Callable[[str], Exception] = ValueError) -> Path:
    """Check, before any work, that a file can be written at ``path`` (its folder exists and is writable).

    :param path: The output file.
    :param what: The name of the argument or option, used in the message (e.g. ``"--out"``).
    :param fail: Exception type raised with the message.
    :return: ``path`` as a :class:`~pathlib.Path`.
    :raises ValueError: (or ``fail``) If ``path`` is a directory, its folder does not exist or is a file, or the
        folder is not writable.
    """
    target = Path(path)
    if target.is_dir():
        raise fail(f"{what}: {target} is a directory; give a file name")
    parent = target.parent
    if not parent.exists():
        blocker = _nearest_existing(parent)
        if blocker.exists() and not blocker.is_dir():
            raise fail(f"{what}: {blocker} is a file, not a directory, so {target} cannot be created")
        raise fail(f"{what}: directory does not exist: {parent}")
    if not parent.is_dir():
        raise fail(f"{what}: {parent} is a file, not a directory, so {target} cannot be created")
    reason = _probe_writable(parent)
    if reason is not None:
        raise fail(f"{what}: cannot write into {parent} ({reason})")
    return target


def check_output_dir(path: str | os.PathLike, what: str, fail: Callable[[str], Exception] = ValueError) -> Path:
    """Check, before any work, that ``path`` is or can become a writable directory (it is not created here).

    :param path: The output folder.
    :param what: The name of the argument or option, used in the message.
    :param fail: Exception type raised with the message.
    :return: ``path`` as a :class:`~pathlib.Path`.
    :raises ValueError: (or ``fail``) If ``path`` or one of its parents is a file, or the folder that would hold it
        is not writable.
    """
    target = Path(path)
    existing = _nearest_existing(target)
    if not existing.is_dir():
        if existing == target:
            raise fail(f"{what}: {target} is a file, not a directory")
        raise fail(f"{what}: {existing} is a file, not a directory, so {target} cannot be created")
    reason = _probe_writable(existing)
    if reason is not None:
        raise fail(f"{what}: cannot write into {existing} ({reason})")
    return target
