"""Adapters that run a real attack on an ART ``PyTorchClassifier`` and return the worst loss found per sample.

The *empirical* columns of :class:`art_jacreg.bound_report.BoundReport` come from here. Every attack works in the raw
input units of the classifier (``eps`` through ART's ``preprocessing``) and stays in the ``clip_values`` box. Candidate
points are projected onto the ball and box once more (float64) before they are evaluated, so each reported attack
loss is the cross-entropy at a point of the threat set: a valid *lower* bound on the robust loss.

Success-oriented attacks (APGD, AutoAttack) return the clean input, or their random start, for samples they do not
fool. To make the loss meaningful there too, the loss-maximising iterate is also collected where the attack exposes
it: ART APGD keeps it in ``x_max`` (read after a single-batch, single-restart run), and torchattacks' APGD returns it
with ``perturb(..., best_loss=True)``. The attack loss is the maximum of the cross-entropy over the candidates and the
clean point.

Supported attacks: ``"apgd"`` (ART ``AutoProjectedGradientDescent``, cross-entropy), ``"autoattack"`` (ART
``AutoAttack`` with APGD-CE and APGD-DLR; needs the ``multiprocess`` package), ``"torchattacks"``
(``torchattacks.APGD``, cross-entropy) and ``"pgd"`` (ART ``ProjectedGradientDescent``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from art_jacreg import _validate
from art_jacreg._art import logits_function, model_mode, seeded

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

__all__ = ["ATTACKS", "AttackResult", "validate_attack", "run_attack", "project", "evaluate"]

# The vocabulary lives in art_jacreg._validate; these names are kept importable from here.
ATTACKS = _validate.ATTACKS
validate_attack = _validate.validate_attack


class AttackResult(NamedTuple):
    """Per-sample result of :func:`run_attack` (numpy arrays of length ``N``).

    :ivar x_adv: The reported point in the ball and box: the highest-loss misclassified candidate if any candidate is
        misclassified, else the highest-loss candidate (possibly the clean input).
    :ivar loss: Highest cross-entropy over the clean input and all candidates (empirical lower bound on the robust
        loss).
    :ivar prediction: Prediction at ``x_adv``.
    :ivar success: Whether a misclassified point (the clean input included) was found in the ball.
    """

    x_adv: np.ndarray
    loss: np.ndarray
    prediction: np.ndarray
    success: np.ndarray


def project(x_adv: np.ndarray, x: np.ndarray, eps: float, norm: float, clip_values: Any) -> np.ndarray:
    """Project points onto the ball ``B_norm(x, eps)`` intersected with the ``clip_values`` box (float64 arithmetic).

    :param x_adv: Candidate points ``(N, ...)``.
    :param x: Centres ``(N, ...)``.
    :param eps: Radius, raw input units.
    :param norm: ``2.0`` or ``inf``.
    :param clip_values: ``(min, max)`` or ``None``.
    :return: float32 points in the ball and box.
    """
    x64 = x.astype(np.float64)
    delta = x_adv.astype(np.float64) - x64
    flat = delta.reshape(delta.shape[0], -1)
    if norm == np.inf:
        flat = np.clip(flat, -eps, eps)
    else:
        lengths = np.linalg.norm(flat, axis=1, keepdims=True)
        # Shrink a hair below eps so the float32 cast cannot push the point out of the ball.
        target = eps * (1.0 - 1e-6)
        flat = flat * np.where(lengths > target, target / np.maximum(lengths, 1e-300), 1.0)
    out = x64 + flat.reshape(delta.shape)
    if clip_values is not None:
        out = np.clip(out, np.asarray(clip_values[0], np.float64), np.asarray(clip_values[1], np.float64))
    out32 = out.astype(np.float32)
    if norm == np.inf:
        # Rounding to float32 can land one ulp outside the ball; step back towards the centre.
        over = np.abs(out32.astype(np.float64) - x64) > eps
        out32[over] = np.nextafter(out32[over], x.astype(np.float32)[over])
    return out32


def evaluate(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy and prediction of the classifier at ``x`` (eval mode, preprocessing included).

    :param classifier: The ART classifier.
    :param x: Inputs ``(N, *input_shape)`` in raw units.
    :param y: Integer labels ``(N,)``.
    :return: ``(loss, prediction)`` as float64 and int64 arrays.
    """
    import torch

    func = logits_function(classifier)
    losses, preds = [], []
    with torch.no_grad(), model_mode(classifier.model, False):
        for start in range(0, x.shape[0], 512):
            logits = func(torch.as_tensor(x[start : start + 512], device=classifier.device))
            labels = torch.as_tensor(y[start : start + 512], dtype=torch.long, device=logits.device)
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="none").double().cpu().numpy())
            preds.append(logits.argmax(dim=1).cpu().numpy().astype(np.int64))
    return np.concatenate(losses), np.concatenate(preds)


def _art_apgd(classifier: PyTorchClassifier, eps: float, norm: float, n: int, loss_type: str, params: dict) -> Any:
    from art.attacks.evasion import AutoProjectedGradientDescent

    kwargs = {"eps_step": 2.0 * eps, "max_iter": 100, "nb_random_init": 1, **params}
    return AutoProjectedGradientDescent(
        classifier, norm=norm, eps=eps, batch_size=n, targeted=False, loss_type=loss_type, verbose=False, **kwargs
    )


def _x_max(apgd: Any, x: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """ART APGD's loss-maximising iterates, mapped back to their samples (single batch, single restart only)."""
    x_max = getattr(apgd, "x_max", None)
    if apgd.nb_random_init != 1 or x_max is None or x_max.shape[0] != int(mask.sum()):
        return []
    out = x.copy()
    out[mask] = x_max
    return [out]


def _candidates(
    attack: str, classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray, eps: float, norm: float, params: dict
) -> list[np.ndarray]:
    n = x.shape[0]
    one_hot = np.eye(classifier.nb_classes, dtype=np.float32)[y]
    if attack == "pgd":
        from art.attacks.evasion import ProjectedGradientDescent

        kwargs = {"max_iter": 40, "num_random_init": 1, **params}
        kwargs.setdefault("eps_step", 2.5 * eps / kwargs["max_iter"])
        pgd = ProjectedGradientDescent(classifier, norm=norm, eps=eps, batch_size=n, verbose=False, **kwargs)
        return [pgd.generate(x, y=one_hot)]
    if attack == "torchattacks":
        return [_torchattacks_apgd(classifier, x, y, eps, norm, params)]
    _, clean_pred = evaluate(classifier, x, y)
    mask = clean_pred == y
    if attack == "apgd":
        apgd = _art_apgd(classifier, eps, norm, n, "cross_entropy", params)
        return [apgd.generate(x, y=one_hot), *_x_max(apgd, x, mask)]
    from art.attacks.evasion import AutoAttack

    ce = _art_apgd(classifier, eps, norm, n, "cross_entropy", params)
    dlr = _art_apgd(classifier, eps, norm, n, "difference_logits_ratio", params)
    auto = AutoAttack(classifier, norm=norm, eps=eps, eps_step=2.0 * eps, attacks=[ce, dlr], batch_size=n)
    return [auto.generate(x, y=one_hot), *_x_max(ce, x, mask)]


def _scalar_box(classifier: PyTorchClassifier) -> tuple[float, float]:
    clip = classifier.clip_values
    if clip is None:
        raise ValueError("attack='torchattacks' needs the classifier's `clip_values` (torchattacks clamps to a box).")
    lo, hi = np.unique(np.asarray(clip[0])), np.unique(np.asarray(clip[1]))
    if lo.size != 1 or hi.size != 1:
        raise ValueError("attack='torchattacks' needs scalar `clip_values`; use attack='apgd' for per-feature boxes.")
    return float(lo[0]), float(hi[0])


def _torchattacks_apgd(
    classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray, eps: float, norm: float, params: dict
) -> np.ndarray:
    """Run torchattacks' APGD-CE on the box rescaled to ``[0, 1]`` (which it clamps to); loss-maximising points."""
    import torch
    import torchattacks

    lo, hi = _scalar_box(classifier)
    scale = hi - lo
    func = logits_function(classifier)

    class _UnitBoxModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = classifier.model  # registered only so torchattacks can find the device

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return func(lo + scale * u)

    wrapper = _UnitBoxModel().eval()
    kwargs = {"steps": 100, "n_restarts": 1, **params}
    atk = torchattacks.APGD(wrapper, norm="Linf" if norm == np.inf else "L2", eps=eps / scale, loss="ce", **kwargs)
    u = torch.as_tensor((x - lo) / scale, device=classifier.device)
    labels = torch.as_tensor(y, dtype=torch.long, device=classifier.device)
    with model_mode(classifier.model, False):
        _, u_adv = atk.perturb(u, labels, best_loss=True)
    return (lo + scale * u_adv.detach().cpu().numpy()).astype(np.float32)


def run_attack(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    norm: float,
    attack: str = "apgd",
    batch_size: int = 128,
    attack_params: dict[str, Any] | None = None,
    seed: int = 0,
    progress: Any = None,
) -> AttackResult:
    """Attack every sample on the ball ``B_norm(x, eps)`` intersected with the ``clip_values`` box.

    :param classifier: The ART ``PyTorchClassifier`` to attack (``eps`` in its raw input units).
    :param x: Validated float32 inputs ``(N, *input_shape)`` (not modified).
    :param y: Integer labels ``(N,)``.
    :param eps: Radius, raw input units (``0`` evaluates the clean point only).
    :param norm: ``2.0`` or ``inf``.
    :param attack: One of :data:`ATTACKS`.
    :param batch_size: Samples per attack call.
    :param attack_params: Overrides of the attack's keyword arguments (e.g. ``{"max_iter": 20}``; torchattacks uses
        ``steps`` / ``n_restarts``).
    :param seed: Seed for the attacks' random starts (global generator states are restored afterwards).
    :param progress: Optional callable ``progress(n_done)`` called after every batch (a tqdm ``update``).
    :return: :class:`AttackResult`.
    """
    attack = validate_attack(attack)
    params = dict(attack_params or {})
    clip = classifier.clip_values
    best_loss, clean_pred = evaluate(classifier, x, y)
    best_x = x.copy()
    found = clean_pred != y
    found_loss = np.where(found, best_loss, -np.inf)
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        cands: list[np.ndarray] = []
        if eps > 0:
            with seeded(seed + start):
                cands = _candidates(attack, classifier, x[sl], y[sl], eps, norm, params)
        for cand in cands:
            cand = project(cand, x[sl], eps, norm, clip)
            loss, pred = evaluate(classifier, cand, y[sl])
            wrong = pred != y[sl]
            # Prefer misclassified points; among equals, the higher loss.
            take = np.where(wrong, ~found[sl] | (loss > found_loss[sl]), ~found[sl] & (loss > best_loss[sl]))
            best_x[sl][take] = cand[take]
            found_loss[sl] = np.where(wrong & (loss > found_loss[sl]), loss, found_loss[sl])
            found[sl] |= wrong
            best_loss[sl] = np.maximum(best_loss[sl], loss)
        if progress is not None:
            progress(min(batch_size, x.shape[0] - start))
    _, prediction = evaluate(classifier, best_x, y)
    return AttackResult(best_x, best_loss, prediction, found | (prediction != y))
