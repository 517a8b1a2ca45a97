"""Adapters of plain training, ART's adversarial trainers and Jacobian regularization.

Each adapter carries, next to it, the adaptations the harness makes around ART and where its settings come from.
The tuning budget is the same for every defence: none. Each defence runs with its paper's recommended values where
they carry over to MNIST in ``[0, 1]`` and to the protocol's epoch budget; the one deviation shared by every
multi-step trainer is PGD-7 (7 steps of ``2.5 eps / 7``, Madry et al.'s step rule) instead of PGD-40, to keep the
full preset feasible on 2 cores. IBP lives in :mod:`art_jacreg.compare.ibp`, the certified trainer in
:mod:`art_jacreg.compare.certified`.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import numpy as np

from art_jacreg.compare.art_glue import NonSequential, art_data_path, classifier, pgd_attack, training_eps
from art_jacreg.compare.registry import DefenceSpec, adapter

__all__: list[str] = []


def _threat_norm(spec: DefenceSpec) -> float:
    """The norm a defence trains against, required by every adapter but ``plain``.

    :param spec: The defence.
    :return: ``spec.norm``.
    :raises ValueError: If ``spec.norm`` is ``None``.
    """
    if spec.norm is None:
        raise ValueError(f"`norm` of defence {spec.name!r} must be 2.0 or inf for trainer {spec.trainer!r}, got None.")
    return spec.norm


_PGD7 = "PGD-7 with step 2.5 eps/7 (Madry et al. 2018 use PGD-40 on MNIST; 7 steps is the shared cost budget)"


@adapter("plain", ["none: PyTorchClassifier.fit with the shared optimizer"], "Adam, shared lr and batch")
def _train_plain(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    clf = classifier(model, ctx)
    clf.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs, verbose=ctx.verbose)
    return {}


@adapter(
    "fgsm",
    ["none needed: AdversarialTrainer(FastGradientMethod, ratio=0.5) with eps in [0, 1] pixel units"],
    "Goodfellow et al. 2015: half clean, half FGSM examples (ratio 0.5)",
)
def _train_fgsm(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art.attacks.evasion import FastGradientMethod
    from art.defences.trainer import AdversarialTrainer

    clf = classifier(model, ctx)
    attack = FastGradientMethod(clf, norm=spec.norm, eps=training_eps(spec, ctx), batch_size=512)
    ratio = spec.params.get("ratio", 0.5)
    AdversarialTrainer(clf, attack, ratio=ratio).fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"ratio": ratio}


@adapter(
    "madry",
    [
        "eps, eps_step set for [0, 1] inputs (ART's defaults eps=8, eps_step=2 assume 0-255 pixels)",
        "nb_epochs/batch_size passed explicitly to fit (ART's default nb_epochs=205)",
    ],
    f"Madry et al. 2018 (AdversarialTrainerMadryPGD, all-adversarial batches); {_PGD7}",
)
def _train_madry(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerMadryPGD

    clf = classifier(model, ctx)
    eps = training_eps(spec, ctx)
    max_iter = spec.params.get("max_iter", 7)
    trainer = AdversarialTrainerMadryPGD(
        clf, nb_epochs=ctx.epochs, batch_size=ctx.batch_size, eps=eps, eps_step=2.5 * eps / max_iter, max_iter=max_iter
    )
    trainer.fit(ctx.x, ctx.y, nb_epochs=ctx.epochs, batch_size=ctx.batch_size)
    return {"max_iter": max_iter, "eps_step": 2.5 * eps / max_iter}


@adapter(
    "pgd",
    [
        "AdversarialTrainer(ProjectedGradientDescent, ratio=1.0): Madry's PGD training in l2, which "
        "AdversarialTrainerMadryPGD cannot do (it has no norm parameter)"
    ],
    f"Madry et al. 2018 in l2 (all-adversarial batches); {_PGD7}",
)
def _train_pgd(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainer

    clf = classifier(model, ctx)
    eps = training_eps(spec, ctx)
    max_iter = spec.params.get("max_iter", 7)
    attack = pgd_attack(clf, _threat_norm(spec), eps, max_iter)
    AdversarialTrainer(clf, attack, ratio=1.0).fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"max_iter": max_iter, "eps_step": 2.5 * eps / max_iter}


@adapter(
    "trades",
    [
        "model wrapped in a non-Sequential nn.Module (TRADES reads accuracy from _model(x)[0], the first layer's "
        "output for nn.Sequential, and crashes)",
        "no LR scheduler passed (TRADES rejects torch-2 schedulers: isinstance(_LRScheduler) check)",
    ],
    f"Zhang et al. 2019: beta 6 (their MNIST and CIFAR value); {_PGD7}",
)
def _train_trades(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch

    clf = classifier(NonSequential.wrap(model), ctx)
    max_iter, beta = spec.params.get("max_iter", 7), spec.params.get("beta", 6.0)
    attack = pgd_attack(clf, _threat_norm(spec), training_eps(spec, ctx), max_iter)
    AdversarialTrainerTRADESPyTorch(clf, attack, beta=beta).fit(
        ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs
    )
    return {"max_iter": max_iter, "beta": beta}


@adapter(
    "fbf",
    [
        "model wrapped in a non-Sequential nn.Module (FBF reads accuracy from _model(x)[0] and crashes on "
        "nn.Sequential)",
        "labels passed one-hot (FBF's loss_gradient raises IndexError on index labels)",
        "optimizer SGD(momentum=0.9, weight_decay=5e-4) instead of Adam: FBF overwrites the learning rate with its "
        "own cyclic schedule peaking at 0.21 (an SGD value; Adam diverges at it)",
        "l-inf only (FBF has no norm parameter)",
    ],
    "Wong et al. 2020 as ART hard-codes it: FGSM from a random start, step 1.25 eps, cyclic lr peaking at 0.21 "
    "(their CIFAR value; their MNIST recipe's Adam peak 5e-3 cannot be passed to ART)",
)
def _train_fbf(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    import torch
    from art.defences.trainer import AdversarialTrainerFBFPyTorch

    wrapped = NonSequential.wrap(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    clf = classifier(wrapped, ctx, optimizer=optimizer)
    AdversarialTrainerFBFPyTorch(clf, eps=training_eps(spec, ctx)).fit(
        ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs
    )
    return {"optimizer": "SGD(momentum=0.9, weight_decay=5e-4), FBF's cyclic lr (peak 0.21)"}


@adapter(
    "awp",
    [
        "proxy classifier = deep copy of the model with its own SGD(lr=0.01) optimizer (ART requires one)",
        "ART_DATA_PATH pointed at a temporary directory during fit (AWP writes checkpoints there) and restored",
        "no LR scheduler passed (AWP rejects torch-2 schedulers)",
    ],
    f"Wu et al. 2020: gamma 5e-3 (their value), PGD mode, no warm-up (short budget); {_PGD7}",
)
def _train_awp(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    import torch
    from art.defences.trainer import AdversarialTrainerAWPPyTorch

    clf = classifier(model, ctx)
    proxy_model = copy.deepcopy(model)
    proxy = classifier(proxy_model, ctx, optimizer=torch.optim.SGD(proxy_model.parameters(), lr=0.01))
    max_iter = spec.params.get("max_iter", 7)
    gamma, warmup = spec.params.get("gamma", 0.005), spec.params.get("warmup", 0)
    attack = pgd_attack(clf, _threat_norm(spec), training_eps(spec, ctx), max_iter)
    trainer = AdversarialTrainerAWPPyTorch(clf, proxy, attack, mode="PGD", gamma=gamma, beta=6.0, warmup=warmup)
    with tempfile.TemporaryDirectory(prefix="art-jacreg-awp-") as tmp, art_data_path(tmp):
        trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"max_iter": max_iter, "gamma": gamma, "warmup": warmup, "mode": "PGD"}


@adapter(
    "jr",
    ["none: art_jacreg.JacobianRegularizedTrainer"],
    "Wu & Li 2024 regulariser; weights from a 3-point grid per norm (the stated tuning budget, one decade apart)",
)
def _train_jr(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art_jacreg.trainer import JacobianRegularizedTrainer

    clf = classifier(model, ctx)
    params = {"reg_weight": spec.params.get("reg_weight"), "n_projections": spec.params.get("n_projections", 1)}
    if spec.norm == np.inf:
        params = {"reg_weight": spec.params.get("reg_weight"), "n_rows": spec.params.get("n_rows", 1)}
    extra = {k: v for k, v in spec.params.items() if k not in ("reg_weight", "n_projections", "n_rows")}
    trainer = JacobianRegularizedTrainer(
        clf, norm=_threat_norm(spec), seed=ctx.seed, verbose=ctx.verbose, **params, **extra
    )
    trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {**params, **extra, "reg_weight": trainer.reg_weight}
