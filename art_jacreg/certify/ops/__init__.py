"""The operations a :class:`~art_jacreg.certify.network.PiecewiseLinearNetwork` is made of, one class per file.

Every operation owns its rules (see :mod:`art_jacreg.certify.ops.base`; the affine ones derive them in
:mod:`art_jacreg.certify.ops.affine`): forward, interval step, linear relaxation
(dense rows and, for convolutional prefixes, patches), Jacobian pull-back, centre-and-ball step, operator-norm
bound. Affine operations (:class:`Affine`, :class:`Linear`, :class:`Conv2d`, :class:`Reshape`) derive all of them
from ``lin(x) + offset``, its adjoint and the entry-wise absolute value and square of its matrix; the
piecewise-linear ones are :class:`ReLU` and :class:`MaxPool2d`. Operations are built frozen (float64 copies of the
parameters, for the certifiers) or live (``live=True``: the model's own parameters, so that the same rules serve
certified training, differentiably); each also owns a differentiable training estimate of its operator norm
(:meth:`~.base.Op.training_norm`).

A new operation is one class in one file here (plus its conversion in :mod:`art_jacreg.certify.convert` and its
tests); the engines need no change.
"""

from __future__ import annotations

# DTYPE, Shape and the network stay importable from here, as before the split (documented where defined).
from art_jacreg.certify._dtype import DTYPE, Shape  # noqa: F401
from art_jacreg.certify.network import PiecewiseLinearNetwork  # noqa: F401
from art_jacreg.certify.ops.affine import AffineOp
from art_jacreg.certify.ops.base import Op, PiecewiseOp
from art_jacreg.certify.ops.conv import Conv2d
from art_jacreg.certify.ops.elementwise import Affine
from art_jacreg.certify.ops.linear import Linear
from art_jacreg.certify.ops.maxpool import MaxPool2d
from art_jacreg.certify.ops.relu import ReLU
from art_jacreg.certify.ops.reshape import Reshape

__all__ = ["Op", "AffineOp", "PiecewiseOp", "Affine", "Linear", "Conv2d", "Reshape", "ReLU", "MaxPool2d"]
