r"""Jacobian norms of a network w.r.t. its input, exact and estimated, batched and differentiable.

Pure torch: nothing here knows about ART. Every function takes ``func``, a callable mapping an input batch
``x`` of shape ``(B, *input_shape)`` to logits ``(B, K)`` whose samples do not interact (evaluation-mode BatchNorm,
no batch statistics), and returns one value per sample. With ``create_graph=True`` the result is differentiable
w.r.t. the parameters of ``func`` (double backpropagation), which is what training needs.

The forward-only estimators of :math:`\|J\|_F^2` (forward-mode AD and central finite differences along random
input directions, no double backpropagation in training) live in :mod:`art_jacreg.forward_norms` and are
re-exported here.

| Paper link (random projections): Hoffman, Roberts and Yaida 2019, https://arxiv.org/abs/1908.02729
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from art_jacreg.forward_norms import (
    ESTIMATORS,
    FINITE_DIFFERENCE_STEP,
    finite_difference_jvp,
    frobenius_norm_sq_finite_difference,
    frobenius_norm_sq_jvp,
    jacobian_vector_product,
    random_unit_directions,
    validate_estimator,
)

logger = logging.getLogger(__name__)

__all__ = [
    "jacobian",
    "frobenius_norm_sq",
    "l11_norm",
    "spectral_norm_estimate",
    "vector_jacobian_product",
    "jacobian_from_logits",
    "frobenius_norm_sq_from_logits",
    "l11_norm_from_logits",
    "ESTIMATORS",
    "FINITE_DIFFERENCE_STEP",
    "validate_estimator",
    "random_unit_directions",
    "jacobian_vector_product",
    "finite_difference_jvp",
    "frobenius_norm_sq_jvp",
    "frobenius_norm_sq_finite_difference",
]

Func = Callable[[torch.Tensor], torch.Tensor]


def _prepare(func: Func, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``func`` on a copy of ``x`` that requires grad; check the output is ``(B, K)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`x` must be a non-empty batch of shape (B, ...), got {tuple(x.shape)}.")
    x_in = x.detach().clone().requires_grad_(True)
    out = func(x_in)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"`func` must map a batch (B, ...) to logits (B, K); got output {shape} for B={x.shape[0]}.")
    return x_in, out


def vector_jacobian_product(func: Func, x: torch.Tensor, v: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-sample vector-Jacobian products ``v_b^T J(x_b)`` for one or several vectors per sample.

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``.
    :param x: Input batch.
    :param v: ``(B, K)`` for one vector per sample or ``(M, B, K)`` for ``M`` vectors per sample.
    :param create_graph: Keep the graph for differentiation w.r.t. the parameters of ``func``.
    :return: ``(B, d)`` or ``(M, B, d)`` with ``d = prod(input_shape)``.
    """
    x_in, out = _prepare(func, x, create_graph)
    return _vjp(out, x_in, v, create_graph)


def _vjp(out: torch.Tensor, x_in: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    batch = x_in.shape[0]
    v = v.to(dtype=out.dtype, device=out.device)
    if v.ndim == 2:
        (grad,) = torch.autograd.grad(out, x_in, grad_outputs=v, create_graph=create_graph)
        return grad.reshape(batch, -1)
    if v.shape[0] == 1:
        return _vjp(out, x_in, v[0], create_graph).unsqueeze(0)
    (grad,) = torch.autograd.grad(out, x_in, grad_outputs=v, create_graph=create_graph, is_grads_batched=True)
    return grad.reshape(v.shape[0], batch, -1)


def jacobian(func: Func, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """The exact per-sample Jacobian of the logits w.r.t. the (flattened) input.

    One forward pass and ``K`` vector-Jacobian products batched together (``is_grads_batched``), no Python loop
    over samples or classes.

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``.
    :param x: Input batch.
    :param create_graph: Keep the graph for differentiation w.r.t. the parameters of ``func``.
    :return: Tensor ``(B, K, d)`` with ``d = prod(input_shape)``.
    """
    x_in, out = _prepare(func, x, create_graph)
    return jacobian_from_logits(x_in, out, create_graph=create_graph)


def jacobian_from_logits(x: torch.Tensor, logits: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """:func:`jacobian` from an existing forward pass, so a training step can share it with the loss.

    :param x: Input batch that requires grad.
    :param logits: ``(B, K)`` logits computed from ``x``.
    :param create_graph: Keep the graph for differentiation w.r.t. the parameters.
    :return: Tensor ``(B, K, d)``.
    """
    n_classes = logits.shape[1]
    basis = torch.eye(n_classes, dtype=logits.dtype, device=logits.device)
    v = basis[:, None, :].expand(n_classes, logits.shape[0], n_classes)
    return _vjp(logits, x, v, create_graph).permute(1, 0, 2)


def frobenius_norm_sq(
    func: Func,
    x: torch.Tensor,
    n_projections: int | None = None,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Squared Frobenius norm :math:`\|J(x)\|_F^2` of the input-output Jacobian, per sample.

    Exact (``n_projections=None``): all ``K`` rows through batched vector-Jacobian products. Estimated
    (``n_projections=m``): for ``v`` uniform on the unit sphere of :math:`\mathbb{R}^K`,
    :math:`\mathbb{E}[K \|v^\top J\|_2^2] = \|J\|_F^2`; the mean over ``m`` independent draws is unbiased and
    costs ``m`` vector-Jacobian products (Hoffman, Roberts and Yaida 2019).

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``.
    :param x: Input batch.
    :param n_projections: ``None`` for the exact value, else the number of random projections (>= 1).
    :param create_graph: Make the result differentiable w.r.t. the parameters of ``func`` (for training).
    :param generator: Random generator for the projections (reproducibility).
    :return: Tensor ``(B,)``.
    """
    x_in, out = _prepare(func, x, create_graph)
    return frobenius_norm_sq_from_logits(x_in, out, n_projections, create_graph, generator)


def frobenius_norm_sq_from_logits(
    x: torch.Tensor,
    logits: torch.Tensor,
    n_projections: int | None = None,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`frobenius_norm_sq` from an existing forward pass (``logits`` computed from ``x``, which requires grad).

    Sharing the forward pass with the cross-entropy saves one forward per training step.

    :param x: Input batch that requires grad.
    :param logits: ``(B, K)`` logits computed from ``x``.
    :param n_projections: ``None`` for the exact value, else the number of random projections (>= 1).
    :param create_graph: Make the result differentiable w.r.t. the parameters (for training).
    :param generator: Random generator for the projections.
    :return: Tensor ``(B,)``.
    """
    if n_projections is None:
        return jacobian_from_logits(x, logits, create_graph=create_graph).pow(2).sum(dim=(1, 2))
    n_projections = _check_count(n_projections, "n_projections")
    batch, n_classes = logits.shape
    v = torch.randn((n_projections, batch, n_classes), generator=generator, dtype=logits.dtype)
    v = (v / v.norm(dim=2, keepdim=True)).to(logits.device)
    products = _vjp(logits, x, v, create_graph)
    return n_classes * products.pow(2).sum(dim=2).mean(dim=0)


def l11_norm(
    func: Func,
    x: torch.Tensor,
    n_rows: int | None = None,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Entry-wise :math:`\|J(x)\|_{1,1} = \sum_{k,j} |J_{kj}|` of the input-output Jacobian, per sample.

    Exact (``n_rows=None``): all ``K`` rows. Estimated (``n_rows=m``): ``m`` rows drawn uniformly without
    replacement per sample, :math:`(K/m) \sum_{k \text{ drawn}} \|J_k\|_1`, unbiased. (A Gaussian or sphere
    projection :math:`\|v^\top J\|_1` is *not* unbiased for this norm and is not used.)

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``.
    :param x: Input batch.
    :param n_rows: ``None`` for the exact value, else the number of rows sampled per sample (1 <= m <= K).
    :param create_graph: Make the result differentiable w.r.t. the parameters of ``func`` (for training).
    :param generator: Random generator for the row draws (reproducibility).
    :return: Tensor ``(B,)``.
    """
    x_in, out = _prepare(func, x, create_graph)
    return l11_norm_from_logits(x_in, out, n_rows, create_graph, generator)


def l11_norm_from_logits(
    x: torch.Tensor,
    logits: torch.Tensor,
    n_rows: int | None = None,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`l11_norm` from an existing forward pass (``logits`` computed from ``x``, which requires grad).

    :param x: Input batch that requires grad.
    :param logits: ``(B, K)`` logits computed from ``x``.
    :param n_rows: ``None`` for the exact value, else the number of rows sampled per sample (1 <= m <= K).
    :param create_graph: Make the result differentiable w.r.t. the parameters (for training).
    :param generator: Random generator for the row draws.
    :return: Tensor ``(B,)``.
    """
    if n_rows is None:
        return jacobian_from_logits(x, logits, create_graph=create_graph).abs().sum(dim=(1, 2))
    n_rows = _check_count(n_rows, "n_rows")
    batch, n_classes = logits.shape
    if n_rows > n_classes:
        raise ValueError(f"`n_rows` must be at most the number of classes ({n_classes}), got {n_rows}.")
    # m distinct rows per sample, uniformly without replacement: the first m of a random permutation.
    keys = torch.rand((batch, n_classes), generator=generator)
    rows = keys.argsort(dim=1)[:, :n_rows].to(logits.device)  # (B, m)
    v = torch.nn.functional.one_hot(rows.T, n_classes).to(logits.dtype)  # (m, B, K)
    products = _vjp(logits, x, v, create_graph)
    return (n_classes / n_rows) * products.abs().sum(dim=(0, 2))


def spectral_norm_estimate(
    func: Func, x: torch.Tensor, n_iter: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Power-iteration estimate of the spectral norm :math:`\|J(x)\|_2` per sample.

    Power iteration on :math:`J J^\top` (a ``K x K`` matrix with the spectrum of :math:`J^\top J`). The result
    :math:`\|J^\top u\|_2 / \|u\|_2` is a **lower** estimate of the largest singular value: it is never used where a
    certificate needs an upper bound (see :mod:`art_jacreg.certify` for sound bounds).

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``.
    :param x: Input batch.
    :param n_iter: Number of power iterations (>= 1).
    :param generator: Random generator for the start vector.
    :return: Tensor ``(B,)``, detached.
    """
    n_iter = _check_count(n_iter, "n_iter")
    jac = jacobian(func, x).detach()  # (B, K, d): K is small, so J J^T is a cheap K x K matrix.
    gram = jac @ jac.transpose(1, 2)
    u = torch.randn((jac.shape[0], jac.shape[1], 1), generator=generator, dtype=jac.dtype, device="cpu").to(jac.device)
    for _ in range(n_iter):
        u = gram @ u
        u = u / u.norm(dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    return (jac.transpose(1, 2) @ u).norm(dim=(1, 2))


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be None or an integer >= 1, got {value!r}.")
    return value
