"""Sound robustness certificates for piecewise-linear torch networks (pure torch; no ART import).

THEORY.md section 2 made executable: :func:`build_network` traces a model (and ART-style ``(mean, std)``
preprocessing) into a chain of supported operations; :func:`certify_at`, :func:`certified_radius`,
:func:`logit_bounds` and :func:`certified_loss_bound` then bound the network over ``B_p(x, eps) ∩ box``
(``p`` in ``{2, inf}``) with one of three methods, from loose and fast to tight and slow:

* ``"lipschitz"`` -- products of upper bounds on layer operator norms (:func:`layer_operator_norms`,
  :func:`global_lipschitz_bound`);
* ``"interval"`` -- interval bound propagation plus the Fast-Lip interval Jacobian;
* ``"linear"`` -- CROWN linear bound propagation plus the interval Jacobian on CROWN's bounds.

Each method also uses the cheaper methods' bounds, so it is never looser than them. All bounds are computed in
float64 and hold for every point of the set: an attack can never beat them.

Layout: :mod:`.network` (the immutable chain of operations; the live chain of training), :mod:`.trace` and
:mod:`.convert` (torch.fx -> a plan -> frozen or live operations), :mod:`.ops` (one class per operation, each owning
its bound rules), the engines :mod:`.intervals` (IBP and CROWN), :mod:`.patches`, :mod:`.local_jacobian` and
:mod:`.lipschitz` (which iterate over operations and call their rules), :mod:`.certificates` and :mod:`.radius` (the
public certificates), and certified training's :mod:`.chain_ops` and :mod:`.objectives`, which run the same engines
on live operations with training norm estimates: one set of rules for training and certification.
"""

from __future__ import annotations

from art_jacreg._validate import METHODS
from art_jacreg.certify.certificates import certified_loss_bound, certify_at, logit_bounds
from art_jacreg.certify.convert import UnsupportedOperationError
from art_jacreg.certify.lipschitz import global_lipschitz_bound, layer_operator_norms
from art_jacreg.certify.network import PiecewiseLinearNetwork
from art_jacreg.certify.radius import certified_radius
from art_jacreg.certify.trace import build_network

__all__ = [
    "METHODS",
    "PiecewiseLinearNetwork",
    "UnsupportedOperationError",
    "build_network",
    "certified_loss_bound",
    "certified_radius",
    "certify_at",
    "global_lipschitz_bound",
    "layer_operator_norms",
    "logit_bounds",
]
