"""Certify batches of points in several processes, or shard them over the ranks of a torch.distributed group.

:func:`map_batches` applies a top-level function ``fn(net, *batch)`` to every batch, in order, and returns the list of
results. The batches themselves never change, only where they are computed, so results are identical bit for bit to
``n_jobs=1`` (every batch runs the same float64 code on the same inputs; each worker uses one torch thread, the
setting under which the single-process run is reproduced exactly).

* ``n_jobs=1`` and no process group: a plain loop in the calling process.
* ``n_jobs > 1``: a :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (a ``fork``
  after torch has started its thread pools can deadlock), ``min(n_jobs, len(batches))`` workers, each receiving the
  network once (pickled; the caller's model is never sent) and setting ``torch.set_num_threads(1)``.
* A ``torch.distributed`` process group initialised: batch ``i`` is computed by rank ``i % world_size`` and the results
  are gathered on every rank (``all_gather_object``); ``n_jobs`` then counts processes per rank.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["map_batches", "validate_n_jobs", "radius_batch", "report_batch"]

_WORKER_NET: Any = None


def validate_n_jobs(n_jobs: Any) -> int:
    """Check ``n_jobs``: an ``int >= 1`` (``bool`` refused).

    :param n_jobs: The number of processes.
    :return: It, as an int.
    :raises ValueError: Otherwise.
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"`n_jobs` must be an int >= 1 (number of processes), got {n_jobs!r}.")
    return int(n_jobs)


def _init_worker(net: Any) -> None:
    global _WORKER_NET
    torch.set_num_threads(1)
    _WORKER_NET = net


def _call(fn: Callable[..., Any], batch: tuple) -> Any:
    return fn(_WORKER_NET, *batch)


def _local(fn: Callable[..., Any], net: Any, batches: Sequence[tuple], n_jobs: int, progress: Any) -> list[Any]:
    out = []
    if n_jobs == 1 or len(batches) <= 1:
        for batch in batches:
            out.append(fn(net, *batch))
            progress.update(1)
        return out
    ctx = multiprocessing.get_context("spawn")
    workers = min(n_jobs, len(batches))
    pool = concurrent.futures.ProcessPoolExecutor
    with pool(workers, mp_context=ctx, initializer=_init_worker, initargs=(net,)) as ex:
        for result in ex.map(_call, [fn] * len(batches), batches):
            out.append(result)
            progress.update(1)
    return out


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _distributed() -> tuple[int, int] | None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def map_batches(
    fn: Callable[..., Any], net: Any, batches: Sequence[tuple], n_jobs: int = 1, progress: Any = None
) -> list[Any]:
    """``[fn(net, *batch) for batch in batches]``, computed in ``n_jobs`` processes and/or over distributed ranks.

    :param fn: A module-level (picklable) function of the network and one batch's arguments; results must be
        picklable (tensors, arrays).
    :param net: The network (picklable, e.g. a :class:`~art_jacreg.certify.PiecewiseLinearNetwork`).
    :param batches: Argument tuples, one per batch.
    :param n_jobs: Processes (per rank under torch.distributed), ``>= 1``.
    :param progress: Optional progress bar (``update(1)`` per batch computed here, ``close()`` at the end).
    :return: The results, in the order of ``batches``, on every rank.
    :raises ValueError: If ``n_jobs`` is not an int ``>= 1``.
    """
    n_jobs = validate_n_jobs(n_jobs)
    progress = _NoProgress() if progress is None else progress
    try:
        group = _distributed()
        if group is None:
            return _local(fn, net, batches, n_jobs, progress)
        rank, world = group
        mine = list(range(rank, len(batches), world))
        results = _local(fn, net, [batches[i] for i in mine], n_jobs, progress)
    finally:
        progress.close()
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, list(zip(mine, results)))
    out: list[Any] = [None] * len(batches)
    for part in gathered:
        for i, value in part:
            out[i] = value
    return out


def radius_batch(net: Any, x: Any, pred: Any, norm: float, clip: Any, method: str) -> Any:
    """Certified radii of one batch (:func:`~art_jacreg.certify.certified_radius`) as a float64 array.

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``, an array.
    :param pred: Predicted classes ``(B,)``.
    :param norm: ``2`` or ``inf``.
    :param clip: ``None`` or ``(min, max)``.
    :param method: The method.
    :return: ``(B,)`` float64 array.
    """
    from art_jacreg.certify.radius import certified_radius

    return certified_radius(net, torch.as_tensor(x), torch.as_tensor(pred), norm, clip, method).double().numpy()


def report_batch(net: Any, x: Any, y: Any, pred: Any, eps: float, norm: float, clip: Any, method: str) -> tuple:
    """The certificates of one batch of a report: loss bound, certified at ``eps``, radius (float64/bool arrays).

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``, an array.
    :param y: True labels ``(B,)`` or one-hot ``(B, K)``.
    :param pred: Predicted classes ``(B,)``.
    :param eps: The radius of the report.
    :param norm: ``2`` or ``inf``.
    :param clip: ``None`` or ``(min, max)``.
    :param method: The method.
    :return: ``(certified_loss_bound, certified, certified_radius)``.
    """
    from art_jacreg.certify.certificates import certified_loss_bound, certify_at

    xt, yt, pt = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(pred)
    bound = certified_loss_bound(net, xt, yt, eps, norm, clip, method).double().numpy()
    cert = certify_at(net, xt, pt, eps, norm, clip, method).numpy()
    return bound, cert, radius_batch(net, x, pred, norm, clip, method)
