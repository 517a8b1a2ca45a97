r"""Forward-only estimators of :math:`\|J(x)\|_F^2`: forward-mode AD and central finite differences.

Pure torch, no ART. :mod:`art_jacreg.norms` estimates :math:`\|J\|_F^2` from vector-Jacobian products
``v^T J`` (reverse mode: training then differentiates a gradient, double backpropagation). The estimators here
use Jacobian-vector products ``J u`` along random *input* directions instead: for ``u`` uniform on the unit sphere
of :math:`\mathbb{R}^d` (``d = prod(input_shape)``), :math:`\mathbb{E}[u u^\top] = I/d`, so

.. math:: \mathbb{E}\big[d\,\|J u\|_2^2\big] = \operatorname{tr}(J^\top J) = \|J\|_F^2 .

* ``"jvp"``: ``J u`` exactly by forward-mode AD (:mod:`torch.autograd.forward_ad`), from the same forward pass as
  the logits (a dual forward). Unbiased. Training differentiates it by one ordinary backward (reverse over
  forward), no ``create_graph``.
* ``"finite_difference"``: ``J u`` approximated by the central difference
  ``(f(x + h u) - f(x - h u)) / (2h)`` with ``h`` the l2 length of the step (Finlay and Oberman 2019 use this form
  for the loss gradient). Two more forward passes, no derivative of a derivative at all. Biased: for a ``C^3``
  map the difference is ``J u + (h^2 / 6) D^3 f(x)[u, u, u] + O(h^4)``, so the estimate's bias is ``O(h^2)``; for a
  ReLU network (piecewise linear) it is exact whenever ``x - h u`` and ``x + h u`` lie in the linear region of
  ``x``, and otherwise measures the secant slope across the kink. In float32 the rounding error grows like
  ``1e-7 |f| / h``: the default :data:`FINITE_DIFFERENCE_STEP` balances both for inputs of unit scale. The two
  forward passes run from the same random-number state, so dropout draws the same mask for both.

Both estimates have a larger variance than the vector-Jacobian one for networks whose Jacobian has few large
singular values (sphere of dimension ``d`` instead of ``K``); the mean over ``n_projections`` directions is used.

| Paper link: https://arxiv.org/abs/1905.11468 (Finlay and Oberman 2019, finite-difference gradient regularization)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD

from art_jacreg._validate import validate_eps, validate_positive_int

__all__ = [
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

#: Estimators of ``||J||_F^2``: vector-Jacobian products (:mod:`art_jacreg.norms`, the default), forward mode, and
#: central finite differences.
ESTIMATORS = ("vjp", "jvp", "finite_difference")

#: Default l2 length ``h`` of the finite-difference step, in raw input units.
FINITE_DIFFERENCE_STEP = 1e-2


def validate_estimator(estimator: object, name: str = "estimator") -> str:
    """Check the name of a ``||J||_F^2`` estimator.

    :param estimator: One of :data:`ESTIMATORS` (case-insensitive, surrounding spaces ignored).
    :param name: Argument name used in error messages.
    :return: The lower-cased name.
    :raises ValueError: For any other value.
    """
    key = estimator.strip().lower() if isinstance(estimator, str) else None
    if key not in ESTIMATORS:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(e) for e in ESTIMATORS)}, got {estimator!r}.")
    return key


def _check_batch(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`x` must be a non-empty batch of shape (B, ...), got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ValueError(f"`x` must be a floating-point tensor, got dtype {x.dtype}.")
    return x


def _check_direction(x: torch.Tensor, u: object) -> torch.Tensor:
    if not isinstance(u, torch.Tensor) or u.shape != x.shape:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"`u` must be a tensor of the shape of `x` {tuple(x.shape)}, got {shape}.")
    return u.detach().to(dtype=x.dtype, device=x.device)


def _check_logits(out: object, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"`func` must map a batch (B, ...) to logits (B, K); got output {shape} for B={batch}.")
    return out


def random_unit_directions(x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` directions per sample, uniform on the unit sphere of the flattened input space.

    Drawn on the CPU (so a CPU ``generator`` serves every device), then moved to ``x``'s device and dtype.

    :param x: Input batch ``(B, *input_shape)`` (only its shape, dtype and device are used).
    :param n: Number of directions per sample (>= 1).
    :param generator: Random generator (reproducibility).
    :return: Tensor ``(n, B, *input_shape)``, each ``[i, b]`` of l2 norm 1.
    """
    n = validate_positive_int(n, "n")
    u = torch.randn((n, *x.shape), generator=generator, dtype=torch.float64)
    u = u / u.flatten(2).norm(dim=2).reshape(n, x.shape[0], *([1] * (x.ndim - 1)))
    return u.to(dtype=x.dtype, device=x.device)


def _forward_ad_errors() -> contextlib.AbstractContextManager:
    """Turn torch's error for an operation without a forward-mode formula into one that names the way out."""

    @contextlib.contextmanager
    def translate() -> Iterator[None]:
        try:
            yield
        except (RuntimeError, NotImplementedError) as err:
            if "forward AD" not in str(err) and "forward-mode" not in str(err) and "jvp" not in str(err):
                raise
            raise NotImplementedError(
                f"`func` uses an operation without forward-mode AD support ({err}); use estimator='vjp' or "
                "estimator='finite_difference' for this model."
            ) from err

    return translate()


def jacobian_vector_product(func: Func, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-sample Jacobian-vector products ``J(x_b) u_b`` from one forward-mode (dual) pass.

    Under grad mode both outputs are differentiable w.r.t. the parameters of ``func`` (reverse over forward), so a
    training loss built from them needs one ordinary backward. ``x`` and ``u`` are not modified.

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``, samples independent.
    :param x: Input batch.
    :param u: Directions, same shape as ``x``.
    :return: ``(logits, Ju)``, both ``(B, K)``.
    :raises NotImplementedError: If ``func`` uses an operation that forward-mode AD does not support.
    """
    x = _check_batch(x)
    u = _check_direction(x, u)
    with _forward_ad_errors(), fwAD.dual_level():
        out = func(fwAD.make_dual(x.detach(), u))
        if not isinstance(out, torch.Tensor):
            _check_logits(out, x.shape[0])
        logits, tangent = fwAD.unpack_dual(out)
    logits = _check_logits(logits, x.shape[0])
    if tangent is None:  # the output does not depend on the input: J = 0
        tangent = torch.zeros_like(logits)
    return logits, tangent


def _rng_devices(x: torch.Tensor) -> tuple[list[int], str]:
    """The accelerator whose random state :func:`torch.random.fork_rng` must save for ``x`` (none on the CPU)."""
    if x.device.type == "cpu":
        return [], "cuda"
    index = x.device.index
    if index is None:
        index = getattr(torch, x.device.type).current_device()
    return [index], x.device.type


def finite_difference_jvp(
    func: Func, x: torch.Tensor, u: torch.Tensor, step: float = FINITE_DIFFERENCE_STEP
) -> torch.Tensor:
    """Central difference ``(f(x + h u) - f(x - h u)) / (2h)``, an ``O(h^2)`` approximation of ``J u`` per sample.

    Both forward passes start from the same random-number state (dropout masks agree). Differentiable w.r.t. the
    parameters of ``func`` under grad mode (by ordinary backpropagation).

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``, samples independent.
    :param x: Input batch.
    :param u: Directions, same shape as ``x`` (unit directions make ``h`` the l2 length of the step).
    :param step: The step ``h > 0``, raw input units.
    :return: Tensor ``(B, K)``.
    """
    x = _check_batch(x)
    u = _check_direction(x, u)
    step = validate_eps(step, "step", allow_zero=False)
    base = x.detach()
    devices, device_type = _rng_devices(x)
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        plus = _check_logits(func(base + step * u), x.shape[0])
    minus = _check_logits(func(base - step * u), x.shape[0])
    return (plus - minus) / (2 * step)


def frobenius_norm_sq_jvp(
    func: Func,
    x: torch.Tensor,
    n_projections: int = 1,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Unbiased forward-mode estimate ``d * mean_m ||J u_m||^2`` of :math:`\|J(x)\|_F^2`, with the logits.

    The first direction rides on the forward pass that yields the logits (return them to the loss to share it);
    each further direction costs one more dual forward pass.

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``, samples independent.
    :param x: Input batch.
    :param n_projections: Number of random directions (>= 1).
    :param create_graph: Make the results differentiable w.r.t. the parameters of ``func`` (for training).
    :param generator: Random generator for the directions.
    :return: ``(logits (B, K), estimate (B,))``.
    """
    x = _check_batch(x)
    n_projections = validate_positive_int(n_projections, "n_projections")
    directions = random_unit_directions(x, n_projections, generator)
    dim = x[0].numel()
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        logits: torch.Tensor | None = None
        total: torch.Tensor | float = 0.0
        for u in directions:
            out, tangent = jacobian_vector_product(func, x, u)
            logits = out if logits is None else logits
            total = total + tangent.pow(2).sum(dim=1)
    return logits, (dim / n_projections) * total  # type: ignore[return-value]


def frobenius_norm_sq_finite_difference(
    func: Func,
    x: torch.Tensor,
    n_projections: int = 1,
    step: float = FINITE_DIFFERENCE_STEP,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Finite-difference estimate ``d * mean_m ||(f(x + h u_m) - f(x - h u_m)) / (2h)||^2`` of :math:`\|J\|_F^2`.

    Bias ``O(h^2)`` for smooth ``func`` (none inside one linear region of a ReLU network); see the module docstring.

    :param func: Map from an input batch ``(B, *input_shape)`` to logits ``(B, K)``, samples independent.
    :param x: Input batch.
    :param n_projections: Number of random unit directions (>= 1).
    :param step: l2 length ``h > 0`` of the step, raw input units.
    :param create_graph: Make the result differentiable w.r.t. the parameters of ``func`` (for training).
    :param generator: Random generator for the directions.
    :return: Tensor ``(B,)``.
    """
    x = _check_batch(x)
    n_projections = validate_positive_int(n_projections, "n_projections")
    step = validate_eps(step, "step", allow_zero=False)
    directions = random_unit_directions(x, n_projections, generator)
    dim = x[0].numel()
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        total: torch.Tensor | float = 0.0
        for u in directions:
            total = total + finite_difference_jvp(func, x, u, step).pow(2).sum(dim=1)
    return (dim / n_projections) * total  # type: ignore[return-value]
