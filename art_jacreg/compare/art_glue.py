"""Small helpers the adapters share to run ART's trainers without patching ART (quiet streams, a temporary
``ART_DATA_PATH``, a non-Sequential wrapper, the PGD attack every adversarial trainer uses).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

__all__ = ["quiet_streams", "art_data_path", "classifier", "NonSequential", "pgd_attack", "training_eps"]


@contextlib.contextmanager
def quiet_streams(quiet: bool) -> Iterator[None]:
    """Send stdout/stderr (ART's unconditional tqdm bars and print calls) to a buffer when ``quiet``.

    :param quiet: Whether to silence the block.
    :return: A context manager.
    """
    if not quiet:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def art_data_path(path: str) -> Iterator[None]:
    """Point ART_DATA_PATH at ``path`` for the block and restore the previous value.

    :param path: A folder.
    :return: A context manager.
    """
    from art import config

    previous = config.ART_DATA_PATH
    config.set_data_path(path)
    try:
        yield
    finally:
        config.set_data_path(previous)


def classifier(model: Any, ctx: Any, optimizer: Any = None) -> Any:
    """The shared ART classifier of a defence: cross-entropy, Adam(``ctx.lr``) unless ``optimizer`` is given.

    :param model: The torch model.
    :param ctx: The :class:`~art_jacreg.compare.training.TrainContext`.
    :param optimizer: Optional optimizer over ``model.parameters()``.
    :return: A ``PyTorchClassifier``.
    """
    from art_jacreg.models import make_classifier

    return make_classifier(model, lr=ctx.lr, optimizer=optimizer)


class NonSequential:
    """Factory of a non-Sequential wrapper (defined lazily so importing this module does not import torch)."""

    @staticmethod
    def wrap(net: Any) -> Any:
        """Wrap ``net`` so that ART's ModelWrapper returns ``[logits]`` (``[0]`` and ``[-1]`` then agree).

        :param net: The model.
        :return: An ``nn.Module`` whose ``forward`` is ``net``.
        """
        from torch import nn

        class _NonSequentialModel(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                return self.inner(x)

        return _NonSequentialModel(net)


def pgd_attack(clf: Any, norm: float, eps: float, max_iter: int, random_init: int = 1) -> Any:
    """ART's PGD with Madry et al.'s step rule ``eps_step = 2.5 eps / max_iter``.

    :param clf: The classifier attacked.
    :param norm: ``2.0`` or ``inf``.
    :param eps: Radius.
    :param max_iter: Steps.
    :param random_init: Random starts.
    :return: The attack.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        clf,
        norm=norm,
        eps=eps,
        eps_step=2.5 * eps / max_iter,
        max_iter=max_iter,
        num_random_init=random_init,
        batch_size=512,
        verbose=False,
    )


def training_eps(spec: Any, ctx: Any) -> float:
    """The radius a defence trains against: its own ``spec.eps`` or the protocol's radius for its norm.

    :param spec: The :class:`~art_jacreg.compare.registry.DefenceSpec`.
    :param ctx: The training context.
    :return: The radius.
    """
    from art_jacreg._validate import norm_key

    return float(spec.eps) if spec.eps is not None else ctx.train_eps[norm_key(spec.norm)]
