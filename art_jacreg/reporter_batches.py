"""The batch loops behind :class:`~art_jacreg.reporter.JacobianBoundReporter`, as functions of an ART classifier.

The reporter class is the ART face (construction, argument validation, the public methods and their documentation);
this module holds what those methods do with already-validated arguments: the checks that a model can be certified,
the batching with progress bars, the batch loops of ``certify`` and ``predict_bounds``, and the assembly of a
:class:`~art_jacreg.bound_report.BoundReport` from first-order estimates, certificates and an attack.
Every function takes the classifier as its first argument and leaves its model as found (the reporter wraps each
public call in :func:`preserving_model`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from art_jacreg import _art, _validate
from art_jacreg.attacks import evaluate, run_attack
from art_jacreg.bound_report import BoundReport

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

__all__ = [
    "preserving_model",
    "certifiable_network",
    "certifiable_inputs",
    "clip_box",
    "progress_bar",
    "certify_batches",
    "logit_bounds_batches",
    "assemble_bound_report",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def preserving_model(method: _F) -> _F:
    """Decorate a classifier method so that the classifier's model is left exactly as found (modes, ``.grad``, flags).

    ART's ``predict`` and attacks switch the model to eval mode and accumulate parameter gradients; the reporter's
    methods must not leave either behind (see :func:`art_jacreg._art.preserved_model_state`).

    :param method: A method of a ``PyTorchClassifier`` subclass.
    :return: The wrapped method.
    """

    @functools.wraps(method)
    def wrapper(self: PyTorchClassifier, *args: Any, **kwargs: Any) -> Any:
        with _art.preserved_model_state(self.model):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def certifiable_network(classifier: PyTorchClassifier) -> Any:
    """The certifiable network of the classifier's current model and preprocessing.

    :func:`art_jacreg._art.network_of`: cached on the weights' values, rebuilt on any change.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: The :class:`~art_jacreg.certify.PiecewiseLinearNetwork`.
    :raises TypeError: If ``classifier`` is not a ``PyTorchClassifier`` or its model is not float32.
    :raises ValueError: If the model does not output ``nb_classes`` logits.
    :raises UnsupportedOperationError: If the model contains an operation the certifiers do not support.
    """
    _art.check_pytorch_classifier(classifier, name="classifier")
    _art.check_float32_model(classifier)
    net = _art.network_of(classifier)
    _art.check_logit_count(classifier, net.num_classes)
    return net


def certifiable_inputs(classifier: PyTorchClassifier, x: Any) -> np.ndarray:
    """``x`` validated against ``input_shape`` and refused outside ``clip_values`` (a certificate would be meaningless).

    :param classifier: An ART ``PyTorchClassifier``.
    :param x: Inputs ``(N, *input_shape)`` in raw units (not modified).
    :return: A float32 copy of ``x``.
    :raises ValueError: On a wrong shape or values outside ``clip_values``.
    """
    x = _art.validate_x(x, classifier)
    _validate.check_clip_range(x, classifier.clip_values, "x", error=True)
    return x


def clip_box(classifier: PyTorchClassifier) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``clip_values`` box as float32 arrays ``(low, high)``, or ``None`` when the classifier has none.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: ``(low, high)`` or ``None``.
    """
    if classifier.clip_values is None:
        return None
    return np.asarray(classifier.clip_values[0], np.float32), np.asarray(classifier.clip_values[1], np.float32)


def progress_bar(total: int, desc: str, show: bool) -> Any:
    """A tqdm progress bar over ``total`` steps, hidden unless ``show``.

    :param total: Number of steps.
    :param desc: Label of the bar.
    :param show: Whether to display it.
    :return: The tqdm bar.
    """
    return tqdm(total=total, desc=desc, disable=not show)


def _predicted_classes(classifier: PyTorchClassifier, x: torch.Tensor) -> np.ndarray:
    """int64 predicted classes of a batch (logits through the preprocessing, model in eval mode, no gradients)."""
    import torch

    with torch.no_grad(), _art.model_mode(classifier.model, False):
        logits = _art.logits_function(classifier)(x)
    return logits.argmax(dim=1).cpu().numpy().astype(np.int64)


def certify_batches(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    norm: float,
    method: str,
    batch_size: int,
    show: bool,
    n_jobs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and certified radii of validated inputs, batch by batch (see ``JacobianBoundReporter.certify``).

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :param x: Validated inputs (:func:`certifiable_inputs`).
    :param norm: Validated norm, ``2.0`` or ``inf``.
    :param method: Validated certification method.
    :param batch_size: Samples per batch.
    :param show: Show a progress bar.
    :param n_jobs: Validated number of processes (:func:`art_jacreg.certify.parallel.map_batches`).
    :return: ``(prediction, radius)``, int64 classes and float radii ``(N,)``.
    """
    import torch

    from art_jacreg.certify.parallel import map_batches, radius_batch

    net, clip = certifiable_network(classifier), clip_box(classifier)
    batches = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        batches.append((xb, _predicted_classes(classifier, torch.as_tensor(xb, device=classifier.device))))
    jobs = [(xb, pred, norm, clip, method) for xb, pred in batches]
    radii = map_batches(radius_batch, net, jobs, n_jobs, progress_bar(len(jobs), f"certify ({method})", show))
    return np.concatenate([p for _, p in batches]), np.concatenate(radii)


def logit_bounds_batches(
    classifier: PyTorchClassifier, x: np.ndarray, eps: float, norm: float, method: str, batch_size: int, show: bool
) -> np.ndarray:
    """Sound logit bounds of validated inputs, batch by batch (see ``JacobianBoundReporter.predict_bounds``).

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :param x: Validated inputs (:func:`certifiable_inputs`).
    :param eps: Validated radius, raw input units.
    :param norm: Validated norm.
    :param method: Validated certification method.
    :param batch_size: Samples per batch.
    :param show: Show a progress bar.
    :return: float32 array ``(N, 2, nb_classes)``: ``[:, 0]`` lower and ``[:, 1]`` upper bounds.
    """
    import torch

    from art_jacreg.certify import logit_bounds

    net, clip = certifiable_network(classifier), clip_box(classifier)
    n = x.shape[0]
    out = []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=f"predict_bounds ({method})", disable=not show, total=-(-n // batch_size)):
        xb = torch.as_tensor(x[start : start + batch_size], device=classifier.device)
        lower, upper = logit_bounds(net, xb, eps, norm, clip, method)
        out.append(np.stack([lower.detach().cpu().numpy(), upper.detach().cpu().numpy()], axis=1))
    return np.concatenate(out).astype(np.float32)


def assemble_bound_report(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    norm: float,
    attack: str,
    method: str,
    batch_size: int,
    attack_params: dict[str, Any] | None,
    seed: int,
    show: bool,
    n_jobs: int,
) -> BoundReport:
    """First-order estimates, certificates and an attack on validated inputs, side by side in a :class:`BoundReport`.

    See ``JacobianBoundReporter.report`` for the meaning of every column.

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :param x: Validated inputs (:func:`certifiable_inputs`).
    :param y: Validated label indices ``(N,)``.
    :param eps: Validated radius, raw input units.
    :param norm: Validated norm.
    :param attack: Validated attack name.
    :param method: Validated certification method.
    :param batch_size: Samples per batch.
    :param attack_params: Overrides of the attack's keyword arguments.
    :param seed: Seed of the attack's random starts.
    :param show: Show progress bars.
    :param n_jobs: Validated number of processes computing the certificates.
    :return: The report.
    """
    import torch

    from art_jacreg.certify.parallel import map_batches, report_batch
    from art_jacreg.first_order import first_order_bounds

    net, clip = certifiable_network(classifier), clip_box(classifier)
    func = _art.logits_function(classifier)
    cols: dict[str, list[np.ndarray]] = {"fo": [], "sur": []}
    jobs = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        xt, yt = torch.as_tensor(xb, device=classifier.device), torch.as_tensor(yb, device=classifier.device)
        pred = _predicted_classes(classifier, xt)
        with _art.model_mode(classifier.model, False):
            fo = first_order_bounds(func, xt, yt, eps, norm)
        cols["fo"].append((fo.first_order_loss - fo.loss).double().cpu().numpy())
        cols["sur"].append((fo.jacobian_surrogate_loss - fo.loss).double().cpu().numpy())
        jobs.append((xb, yb, pred, eps, norm, clip, method))
    certs = map_batches(report_batch, net, jobs, n_jobs, progress_bar(len(jobs), f"report: bounds ({method})", show))
    cols["bound"], cols["cert"], cols["radius"] = (list(part) for part in zip(*certs))
    with progress_bar(x.shape[0], f"report: attack ({attack})", show) as bar:
        result = run_attack(classifier, x, y, eps, norm, attack, batch_size, attack_params, seed, bar.update)
    loss, prediction = evaluate(classifier, x, y)
    return BoundReport(
        label=y,
        prediction=prediction,
        loss=loss,
        # Increments are added to one clean loss so that loss <= first_order_loss <= surrogate holds exactly.
        first_order_loss=loss + np.concatenate(cols["fo"]),
        jacobian_surrogate_loss=loss + np.concatenate(cols["sur"]),
        # The robust loss is at least the clean loss, so max() keeps the bound sound (it only absorbs rounding).
        certified_loss_bound=np.maximum(np.concatenate(cols["bound"]), loss),
        certified=np.concatenate(cols["cert"]).astype(bool),
        certified_radius=np.concatenate(cols["radius"]),
        attack_loss=np.maximum(result.loss, loss),
        attack_success=result.success,
        attack_prediction=result.prediction,
        eps=eps,
        norm=norm,
        method=method,
        attack=attack,
    )
