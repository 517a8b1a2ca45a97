"""The argument parser of the ``art-jacreg`` command: options, their types and help texts (no torch import, so
``--help`` is instant).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from art_jacreg._validate import ATTACKS, LR_SCHEDULES, METHODS
from art_jacreg.cli_types import eps as _eps
from art_jacreg.cli_types import learning_rate as _lr
from art_jacreg.cli_types import nonneg_float as _nonneg_float
from art_jacreg.cli_types import norm as _norm
from art_jacreg.cli_types import positive_int as _positive_int
from art_jacreg.cli_types import seed as _seed

__all__ = ["build_parser", "PROG", "METHOD_CHOICES", "ATTACK_CHOICES"]

PROG = "art-jacreg"


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are a single line (exit code 2)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: The choices of ``--method`` and ``--attack``: the vocabulary's :data:`~art_jacreg._validate.METHODS` and
#: :data:`~art_jacreg._validate.ATTACKS` (that module imports no torch, so ``--help`` stays instant).
METHOD_CHOICES = METHODS
ATTACK_CHOICES = ATTACKS


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only warnings and errors")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch intra-op threads (default 1: the model is small, and oversubscribed cores make torch's "
        "default multi-threading many times slower)",
    )


def _add_method(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default="interval",
        help="certification method, loose and fast to tight and slow (default interval)",
    )


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="MNIST as ART's mnist.npz or a directory of the four IDX files (default: ART's cache if present, else "
        "the embedded 5,000-digit subset)",
    )


def _add_certified(train: argparse.ArgumentParser) -> None:
    """The ``train --certified`` options (CertifiedJacobianTrainer)."""
    group = train.add_argument_group("certified training (CertifiedJacobianTrainer)")
    group.add_argument(
        "--certified",
        action="store_true",
        help="train for certificates at --eps in --norm (worst-case-logit loss) instead of Jacobian regularization; "
        "--reg-weight then adds the Jacobian regulariser (default 0)",
    )
    group.add_argument("--eps", type=_eps, default=None, help="radius to certify (required with --certified)")
    group.add_argument(
        "--bound",
        choices=("global", "local"),
        default="global",
        help="training bound: global (GloRo l2 / IBP l-inf, default: measured as good and faster) or local",
    )
    group.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help="learning rate over the run (default: cosine for l2, step for inf: x0.1 after 3/4 of the epochs)",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="state_dict of mnist_cnn saved by `art-jacreg train`")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``art-jacreg`` command.

    :return: The parser.
    """
    parser = _Parser(
        prog=PROG,
        description="Jacobian regularization, sound certificates and bound reports for ART (MNIST CNN tools).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train",
        help="train mnist_cnn with Jacobian regularization (or plainly) and save its state_dict",
        description="Train art_jacreg.models.mnist_cnn with JacobianRegularizedTrainer and save the state_dict "
        "(loadable with torch.load(weights_only=True)). --reg-weight 0 is plain cross-entropy training.",
    )
    train.add_argument(
        "--norm",
        type=_norm,
        default=2.0,
        help="threat norm of the regulariser: 2 (||J||_F^2) or inf (||J||_{1,1}); default 2",
    )
    train.add_argument(
        "--reg-weight",
        type=_nonneg_float,
        default=None,
        help="regularisation weight >= 0 (default: the trainer's default for the norm; 0 = plain)",
    )
    train.add_argument("--epochs", type=_positive_int, default=10, help="training epochs (default 10)")
    train.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    train.add_argument("--lr", type=_lr, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--n-train", type=_positive_int, default=None, help="train on the first N digits only")
    train.add_argument(
        "--out", metavar="PATH", default="model.pt", help="where to save the state_dict (default model.pt)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the weights and of the training (default 0)")
    train.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="save a checkpoint after every epoch; if PATH exists, resume from it (same settings required)",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training under torchrun (torchrun --nproc_per_node N -m art_jacreg.cli train "
        "--distributed ...): gloo on CPUs, NCCL on GPUs; --batch-size is per process; rank 0 saves --out",
    )
    _add_certified(train)
    _add_data(train)
    _add_common(train)

    certify = sub.add_parser(
        "certify",
        help="print certified radii (median) and certified accuracy of a saved model",
        description="Certify test digits with JacobianBoundReporter.certify (sound; radii in pixel units of [0, 1] "
        "images) and print the median certified radius and the certified accuracy at each --eps.",
    )
    _add_model(certify)
    certify.add_argument("--norm", type=_norm, default=2.0, help="2 or inf (default 2)")
    certify.add_argument(
        "--eps",
        type=_eps,
        nargs="+",
        default=None,
        help="radii for certified accuracy (default 0.1 0.3 for l2, 0.01 0.02 for inf)",
    )
    _add_method(certify)
    certify.add_argument("--n", type=_positive_int, default=200, help="number of test digits (default 200)")
    certify.add_argument("--batch-size", type=_positive_int, default=128, help="samples per batch (default 128)")
    certify.add_argument(
        "--n-jobs", type=_positive_int, default=1, help="processes certifying batches in parallel (default 1)"
    )
    _add_data(certify)
    _add_common(certify)

    report = sub.add_parser(
        "report",
        help="print the BoundReport (first-order estimates, certificates, attack) of a saved model",
        description="Run JacobianBoundReporter.report on test digits and print its markdown; optionally save it as "
        "CSV/JSON and print the generalization report.",
    )
    _add_model(report)
    report.add_argument("--eps", type=_eps, default=None, help="radius (default 1.0 for l2, 0.1 for inf)")
    report.add_argument("--norm", type=_norm, default=2.0, help="2 or inf (default 2)")
    report.add_argument(
        "--attack",
        choices=ATTACK_CHOICES,
        default="apgd",
        help="attack for the empirical columns (default apgd)",
    )
    _add_method(report)
    report.add_argument("--n", type=_positive_int, default=100, help="number of test digits (default 100)")
    report.add_argument(
        "--n-jobs", type=_positive_int, default=1, help="processes computing the certificates in parallel (default 1)"
    )
    report.add_argument("--max-rows", type=_positive_int, default=20, help="rows shown in the table (default 20)")
    report.add_argument("--csv", metavar="PATH", default=None, help="also write the report as CSV")
    report.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON")
    report.add_argument(
        "--generalization",
        action="store_true",
        help="also print the generalization report (layer norms, margin bound, Jacobian norms, gaps "
        "at --eps on --n training and test digits)",
    )
    _add_data(report)
    _add_common(report)

    compare = sub.add_parser(
        "compare",
        help="compare JR with ART's adversarial trainers (table + plots)",
        description="Train every defence on the same MNIST CNN (--model), optimizer and epochs, once per seed "
        "(--seeds); evaluate clean, AutoAttack and certified accuracy, Jacobian norms and generalization gaps; print "
        "the headline table (mean ± std over seeds) and write summary.md, headline.md, results.json/csv and PNG plots "
        "(Pareto plots per threat model) into a results folder (printed). Results are cached per (defence, seed), so "
        "a rerun resumes.",
    )
    compare.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick: 6 defences, 1 seed, 3 epochs, under 5 minutes on 2 cores (default); full: every defence, "
        "3 seeds, 10 epochs, standard AutoAttack at the headline eps (hours; resumable)",
    )
    compare.add_argument(
        "--defences",
        metavar="NAMES",
        default=None,
        help="comma-separated defence names replacing the preset's list (see --list-defences)",
    )
    compare.add_argument("--list-defences", action="store_true", help="print the defence names and exit")
    compare.add_argument(
        "--out", metavar="DIR", default=None, help="results folder (default ./art-jacreg-results/<preset>/<model>)"
    )
    compare.add_argument(
        "--model",
        choices=("mnist_cnn", "mnist_maxpool_cnn"),
        default=None,
        help="architecture every defence trains (default mnist_cnn); run once per model into separate folders",
    )
    seeds = compare.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        metavar="SEED",
        type=_seed,
        nargs="+",
        default=None,
        help="training seeds, e.g. --seeds 0 1 2 (explicit, distinct integers >= 0; each seed fixes the initial "
        "weights, the data order and the attack starts; table cells are mean ± std over them)",
    )
    seeds.add_argument("--seed", type=_seed, default=None, help="one training seed (same as --seeds N)")
    compare.add_argument("--epochs", type=_positive_int, default=None, help="override the preset's epoch budget")
    compare.add_argument("--n-train", type=_positive_int, default=None, help="train on N digits (default: all)")
    compare.add_argument(
        "--n-attack",
        type=_positive_int,
        default=None,
        help="override the number of attacked (and certified, and Jacobian) points",
    )
    compare.add_argument("--attack-iter", type=_positive_int, default=None, help="override APGD iterations")
    standard = compare.add_mutually_exclusive_group()
    standard.add_argument(
        "--standard-autoattack",
        dest="standard_autoattack",
        action="store_true",
        default=None,
        help="also run AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square) at the headline eps on the "
        "first seed (on by default in the full preset)",
    )
    standard.add_argument(
        "--no-standard-autoattack", dest="standard_autoattack", action="store_false", help="skip the standard version"
    )
    compare.add_argument(
        "--square-queries", type=_positive_int, default=None, help="query budget of Square in the standard version"
    )
    compare.add_argument("--no-resume", action="store_true", help="recompute every defence, ignoring the cache")
    compare.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _add_data(compare)
    _add_common(compare)
    return parser
