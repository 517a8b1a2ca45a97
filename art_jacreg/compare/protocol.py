"""The comparison protocol: architecture, seeds, budgets, eps sweeps and presets (identical for every defence).

Every defence gets the same data, model, optimizer (Adam) and epoch budget, once per seed of ``seeds``; a seed fixes
the initial weights, the data order and every random choice during training, and the attacks' random starts. The
evaluation points are the same for every seed (drawn with ``seed``). See :mod:`art_jacreg.compare.evaluation` for
what is measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Protocol", "PRESETS", "get_preset", "validate_seeds"]


def validate_seeds(seeds: Any, name: str = "seeds") -> tuple[int, ...]:
    """Check a tuple of training seeds: at least one, distinct integers >= 0.

    :param seeds: The seeds.
    :param name: Argument name used in messages.
    :return: The seeds as a tuple of ints.
    :raises ValueError: For an empty, repeated, negative or non-integer seed.
    """
    values = tuple(seeds) if isinstance(seeds, (tuple, list)) else None
    if not values:
        raise ValueError(f"`{name}` must be a non-empty tuple of distinct integers >= 0, got {seeds!r}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must hold integers >= 0, got {value!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` must not repeat a seed, got {values!r}.")
    return values


@dataclass(frozen=True)
class Protocol:
    """Budgets and sweeps of one comparison run.

    :ivar name: Preset name.
    :ivar defences: Names of the defences to run (see :func:`art_jacreg.compare.list_defences`).
    :ivar model: Architecture: ``"mnist_cnn"`` or ``"mnist_maxpool_cnn"`` (:mod:`art_jacreg.models`).
    :ivar seeds: Training seeds; every defence is trained and evaluated once per seed, table cells are mean ± std.
    :ivar n_train: Training points (``None``: all of the training set).
    :ivar n_test: Test points for clean accuracy and the standard gap (``None``: all).
    :ivar n_attack: Test points attacked at every eps (and training points attacked for the robust gap).
    :ivar n_certify: Test points certified.
    :ivar n_jacobian: Points (train and test each) for the mean Jacobian norms.
    :ivar epochs: Epoch budget of every defence.
    :ivar batch_size: Mini-batch size.
    :ivar lr: Adam learning rate.
    :ivar seed: Seed of the data subsets (the same evaluation points for every training seed).
    :ivar eps_l2: l2 eps sweep for the fast AutoAttack pair.
    :ivar eps_linf: l-inf eps sweep for the fast AutoAttack pair.
    :ivar cert_eps_l2: l2 eps for certified accuracy.
    :ivar cert_eps_linf: l-inf eps for certified accuracy.
    :ivar train_eps_l2: eps l2-trained defences train against (unless the defence sets its own).
    :ivar train_eps_linf: eps l-inf-trained defences train against (unless the defence sets its own).
    :ivar ref_eps_l2: l2 eps of the robust generalization gap (must be in ``eps_l2``).
    :ivar ref_eps_linf: l-inf eps of the robust generalization gap (must be in ``eps_linf``).
    :ivar headline_eps_l2: l2 eps of the headline table and the Pareto plots (added to ``eps_l2``).
    :ivar headline_eps_linf: l-inf eps of the headline table and the Pareto plots (added to ``eps_linf``).
    :ivar headline_cert_l2: l2 eps of the certified headline column (added to ``cert_eps_l2``).
    :ivar headline_cert_linf: l-inf eps of the certified headline column (added to ``cert_eps_linf``).
    :ivar attack_iter: APGD iterations per attack of the fast pair (each of APGD-CE and APGD-DLR).
    :ivar standard_autoattack: Also run AutoAttack's standard version at the headline eps (first seed only).
    :ivar n_standard: Test points of the standard version.
    :ivar square_queries: Query budget of its Square attack.
    :ivar certify_method: Certification method of the reporter.
    :ivar data_path: MNIST location for :func:`art_jacreg.data.load_mnist` (``None``: ART cache or embedded subset).
    """

    name: str = "custom"
    defences: tuple[str, ...] = ("plain", "madry", "jr-l2-0.01", "jr-linf-0.001")
    model: str = "mnist_cnn"
    seeds: tuple[int, ...] = (0,)
    n_train: int | None = None
    n_test: int | None = None
    n_attack: int = 200
    n_certify: int = 200
    n_jacobian: int = 200
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eps_l2: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    eps_linf: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    cert_eps_l2: tuple[float, ...] = (0.1, 0.3)
    cert_eps_linf: tuple[float, ...] = (0.01, 0.02, 0.1)
    train_eps_l2: float = 1.0
    train_eps_linf: float = 0.1
    ref_eps_l2: float = 1.0
    ref_eps_linf: float = 0.1
    headline_eps_l2: float = 1.5
    headline_eps_linf: float = 0.3
    headline_cert_l2: float = 0.3
    headline_cert_linf: float = 0.1
    attack_iter: int = 20
    standard_autoattack: bool = False
    n_standard: int = 500
    square_queries: int = 1000
    certify_method: str = "interval"
    data_path: str | None = None

    def __post_init__(self) -> None:
        """Validate the fields (raising ``ValueError`` naming the field)."""
        from art_jacreg import _art
        from art_jacreg.compare.training import MODELS

        for name in ("n_attack", "n_certify", "n_jacobian", "epochs", "batch_size", "attack_iter"):
            _art.validate_positive_int(getattr(self, name), name)
        for name in ("n_standard", "square_queries"):
            _art.validate_positive_int(getattr(self, name), name)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                _art.validate_positive_int(getattr(self, name), name)
        if self.model not in MODELS:
            raise ValueError(f"`model` must be one of {', '.join(MODELS)}, got {self.model!r}.")
        object.__setattr__(self, "seeds", validate_seeds(self.seeds))
        heads = {
            "eps_l2": "headline_eps_l2",
            "eps_linf": "headline_eps_linf",
            "cert_eps_l2": "headline_cert_l2",
            "cert_eps_linf": "headline_cert_linf",
        }
        for name, head in heads.items():
            _art.validate_eps(getattr(self, head), name=head, allow_zero=False)
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"`{name}` must hold at least one eps.")
            for value in values:
                _art.validate_eps(value, name=name, allow_zero=False)
            # The headline radius is always evaluated: it joins its sweep.
            merged = sorted({float(v) for v in values} | {float(getattr(self, head))})
            object.__setattr__(self, name, tuple(merged))
        for name in ("train_eps_l2", "train_eps_linf", "ref_eps_l2", "ref_eps_linf"):
            _art.validate_eps(getattr(self, name), name=name, allow_zero=False)
        if self.ref_eps_l2 not in self.eps_l2 or self.ref_eps_linf not in self.eps_linf:
            raise ValueError("`ref_eps_l2` / `ref_eps_linf` must be members of `eps_l2` / `eps_linf`.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")
        object.__setattr__(self, "defences", tuple(self.defences))

    def replace(self, **changes: Any) -> Protocol:
        """A copy with some fields changed (validated again).

        :param changes: Field values.
        :return: The new protocol.
        """
        return dataclasses.replace(self, **changes)

    def train_eps(self) -> dict[str, float]:
        """Training eps per norm key.

        :return: ``{"2": train_eps_l2, "inf": train_eps_linf}``.
        """
        return {"2": self.train_eps_l2, "inf": self.train_eps_linf}

    def evaluation_config(self) -> dict[str, Any]:
        """The fields that determine one (defence, seed) result: everything but the preset name, the defence list
        and the seed list (the seed itself is part of each result's key).

        :return: JSON-serialisable dict used in the cache key.
        """
        out = dataclasses.asdict(self)
        del out["name"], out["defences"], out["seeds"]
        if not self.standard_autoattack:
            del out["n_standard"], out["square_queries"]
        return out


_ART_TRAINERS = ("fgsm", "madry", "madry-0.3", "pgd-l2", "pgd-l2-1.5", "trades", "trades-0.3", "fbf", "awp")
_JR = ("jr-l2-0.001", "jr-l2-0.01", "jr-l2-0.1", "jr-linf-0.0003", "jr-linf-0.001", "jr-linf-0.003")
_CERTIFIED = ("certified-global-l2", "certified-local-l2", "certified-local-linf")

PRESETS: dict[str, Protocol] = {
    # Quick: the embedded MNIST (4,000 / 1,000), 6 defences (plain, FGSM, FBF, IBP with the Gowal ramp, JR l2 and
    # l-inf), one seed, 3 epochs at batch 64, the fast AutoAttack pair (10-step APGD-CE/DLR) at two radii per norm on
    # 100 test digits, certificates on 50, no standard AutoAttack. Measured: 4 min 25 s wall, 135 s CPU, on 2 cores
    # shared with other jobs (load average 6.2-7.8), one torch thread. It must stay under 5 minutes on 2 cores.
    "quick": Protocol(
        name="quick",
        defences=("plain", "fgsm", "fbf", "ibp", "jr-l2-0.01", "jr-linf-0.001"),
        n_attack=100,
        n_certify=50,
        n_jacobian=100,
        epochs=3,
        batch_size=64,
        attack_iter=10,
        eps_l2=(1.0, 1.5),
        eps_linf=(0.1, 0.3),
    ),
    # Full: every registered defence (the certified rows once the trainer exists), 3 seeds, 10 epochs at batch 64,
    # the fast pair (20-step APGD-CE/DLR) on 500 test digits at every radius, certificates on 200, and AutoAttack's
    # standard version on 500 digits at l2 1.5 / l-inf 0.3 for the first seed (Square with 1,000 queries). Estimated
    # on a quiet 2-core CPU: about 3.5 h for mnist_cnn (1.6 h training and fast evaluation, 1.9 h standard
    # AutoAttack), about twice that for mnist_maxpool_cnn; resumable per (defence, seed).
    "full": Protocol(
        name="full",
        defences=("plain", *_ART_TRAINERS, "ibp", "ibp-0.4", *_JR, *_CERTIFIED),
        seeds=(0, 1, 2),
        n_attack=500,
        n_certify=200,
        n_jacobian=500,
        epochs=10,
        batch_size=64,
        attack_iter=20,
        standard_autoattack=True,
        n_standard=500,
    ),
}


def get_preset(name: str) -> Protocol:
    """A preset protocol by name.

    :param name: ``"quick"`` or ``"full"``.
    :return: The protocol (the full preset lists the certified rows only when they are registered).
    :raises ValueError: For an unknown name.
    """
    from art_jacreg.compare.registry import DEFENCES

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    return preset.replace(defences=tuple(d for d in preset.defences if d in DEFENCES or d not in _CERTIFIED))
