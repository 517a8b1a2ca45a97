"""Command line: ``art-jacreg train | certify | report | compare``.

The CLI only parses arguments and calls the library (:mod:`art_jacreg.workflows`, :mod:`art_jacreg.checkpoints`,
:mod:`art_jacreg.compare`). Every output path is checked before any work starts. Errors the user can fix (bad paths
or files, unknown defences, invalid eps, a diverging learning rate) end with exit code 2 and a one-line message on
stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser"]

PROG = "art-jacreg"


class CLIError(Exception):
    """A user error reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are a single line (exit code 2)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: Mirrors of ``art_jacreg.certify.METHODS`` and ``art_jacreg.attacks.ATTACKS``, kept here so that ``--help`` does not
#: import torch; a test checks they stay equal.
METHOD_CHOICES = ("lipschitz", "interval", "linear")
ATTACK_CHOICES = ("apgd", "autoattack", "torchattacks", "pgd")


def _positive_float(text: str, what: str = "value") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{what} must be a finite number > 0, got {text!r}")
    return value


def _eps(text: str) -> float:
    return _positive_float(text, "eps")


def _lr(text: str) -> float:
    return _positive_float(text, "learning rate")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _norm(text: str) -> float:
    key = text.strip().lower()
    if key in ("2", "l2"):
        return 2.0
    if key in ("inf", "linf", "l-inf"):
        return math.inf
    raise argparse.ArgumentTypeError(f"norm must be 2 or inf, got {text!r}")


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
        description="Train every defence on the same MNIST CNN, seed, optimizer and epochs; evaluate clean, "
        "AutoAttack and certified accuracy, Jacobian norms and generalization gaps; write summary.md, "
        "results.json/csv and PNG plots into a results folder (printed). Results are cached per defence, so a rerun "
        "resumes.",
    )
    compare.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick: 7 defences, 3 epochs, under 10 minutes on 2 cores (default); full: every "
        "defence, 10 epochs, roughly 30-45 minutes",
    )
    compare.add_argument(
        "--defences",
        metavar="NAMES",
        default=None,
        help="comma-separated defence names replacing the preset's list (see --list-defences)",
    )
    compare.add_argument("--list-defences", action="store_true", help="print the defence names and exit")
    compare.add_argument(
        "--out", metavar="DIR", default=None, help="results folder (default ./art-jacreg-results/<preset>)"
    )
    compare.add_argument("--epochs", type=_positive_int, default=None, help="override the preset's epoch budget")
    compare.add_argument("--n-train", type=_positive_int, default=None, help="train on N digits (default: all)")
    compare.add_argument(
        "--n-attack",
        type=_positive_int,
        default=None,
        help="override the number of attacked (and certified, and Jacobian) points",
    )
    compare.add_argument("--attack-iter", type=_positive_int, default=None, help="override APGD iterations")
    compare.add_argument("--seed", type=int, default=None, help="override the seed (default 0)")
    compare.add_argument("--no-resume", action="store_true", help="recompute every defence, ignoring the cache")
    compare.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _add_data(compare)
    _add_common(compare)
    return parser


# ---------------------------------------------------------------------------------------------------- commands


def _set_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count for the command (imported only when a command gets to real work)."""
    import torch

    if not hasattr(args, "previous_threads"):
        args.previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)


def _check_data(path: str | None) -> None:
    if path is not None and not Path(path).exists():
        raise CLIError(f"--data: no such file or directory: {path}")


def _load_data(path: str | None) -> Any:
    from art_jacreg.data import load_mnist

    _check_data(path)
    return load_mnist(path)


def _check_outputs(**options: str | None) -> None:
    """Check every output file before any work starts (``option=path``, ``None`` for an option not given)."""
    from art_jacreg._io import check_output_file

    for option, path in options.items():
        if path is not None:
            check_output_file(path, f"--{option}", CLIError)


def _load_classifier(path: str) -> Any:
    from art_jacreg.checkpoints import load_classifier

    try:
        return load_classifier(path, what="MODEL")
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    _check_outputs(out=args.out)
    _check_data(args.data)
    _set_threads(args)
    from art_jacreg.checkpoints import save_state_dict
    from art_jacreg.workflows import accuracy, train_mnist_cnn

    (x, y), (x_test, y_test), _, _ = _load_data(args.data)
    if args.n_train is not None:
        x, y = x[: args.n_train], y[: args.n_train]
    trained = train_mnist_cnn(
        x,
        y,
        norm=args.norm,
        reg_weight=args.reg_weight,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        verbose=not args.quiet,
    )
    save_state_dict(trained.model, args.out)
    test_accuracy = accuracy(trained.classifier, x_test, y_test)
    print(f"trained {trained.describe()}; test accuracy {test_accuracy:.4f} on {len(x_test)} digits")
    print(f"saved state_dict to {args.out}")
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    _check_data(args.data)
    classifier = _load_classifier(args.model)
    _set_threads(args)
    from art_jacreg.workflows import certification_summary, default_certify_eps

    _, (x_test, y_test), _, _ = _load_data(args.data)
    summary = certification_summary(
        classifier,
        x_test[: args.n],
        y_test[: args.n],
        eps=args.eps or default_certify_eps(args.norm),
        norm=args.norm,
        method=args.method,
        batch_size=args.batch_size,
        verbose=not args.quiet,
    )
    print(summary.to_text())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    _check_outputs(csv=args.csv, json=args.json)
    _check_data(args.data)
    classifier = _load_classifier(args.model)
    _set_threads(args)
    from art_jacreg.reporter import JacobianBoundReporter
    from art_jacreg.workflows import default_report_eps, generalization_markdown

    (x_train, y_train), (x_test, y_test), _, _ = _load_data(args.data)
    eps = args.eps if args.eps is not None else default_report_eps(args.norm)
    reporter = JacobianBoundReporter.from_classifier(classifier, verbose=not args.quiet)
    report = reporter.report(
        x_test[: args.n], y_test[: args.n], eps, norm=args.norm, attack=args.attack, method=args.method
    )
    print(report.to_markdown(max_rows=args.max_rows))
    if args.csv:
        report.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    if args.generalization:
        n = args.n
        print(generalization_markdown(classifier, x_train[:n], y_train[:n], x_test[:n], y_test[:n], eps, args.norm))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from art_jacreg._io import check_output_dir
    from art_jacreg.compare import DEFENCES, default_out_dir, get_preset, run_comparison

    if args.list_defences:
        width = max(len(name) for name in DEFENCES)
        for name, spec in DEFENCES.items():
            print(f"{name:<{width}}  {spec.description}")
        return 0
    protocol = get_preset(args.preset)
    changes: dict[str, Any] = {}
    if args.defences is not None:
        names = tuple(n.strip() for n in args.defences.split(",") if n.strip())
        if not names:
            raise CLIError("--defences: give at least one defence name (see --list-defences)")
        unknown = [n for n in names if n not in DEFENCES]
        if unknown:
            raise CLIError(f"--defences: unknown defence(s) {', '.join(unknown)}; known: {', '.join(DEFENCES)}")
        changes["defences"] = names
    if args.data is not None:
        _check_data(args.data)
        changes["data_path"] = str(Path(args.data).resolve())
    for option in ("epochs", "n_train", "attack_iter", "seed"):
        if getattr(args, option) is not None:
            changes[option] = getattr(args, option)
    if args.n_attack is not None:
        changes.update(n_attack=args.n_attack, n_certify=args.n_attack, n_jacobian=args.n_attack)
    protocol = protocol.replace(**changes)
    out = check_output_dir(args.out if args.out is not None else default_out_dir(protocol), "--out", CLIError)
    _set_threads(args)
    result = run_comparison(
        protocol,
        out_dir=out,
        resume=not args.no_resume,
        quiet=args.quiet,
        plots=not args.no_plots,
        threads=args.threads,
    )
    failed = [row["defence"] for row in result.rows if row["status"] != "ok"]
    if failed:
        print(f"{len(failed)} defence(s) failed (see their rows): {', '.join(failed)}", file=sys.stderr)
    print(
        f"computed {len(result.recomputed)}, loaded {len(result.rows) - len(result.recomputed)} from cache, "
        f"{result.seconds:.0f} s"
    )
    print(f"results written to: {result.out_dir.resolve()}")
    return 0


_COMMANDS = {"train": _cmd_train, "certify": _cmd_certify, "report": _cmd_report, "compare": _cmd_compare}

#: Failures a user causes and can fix (a bad path or file, a diverging learning rate, an invalid argument found by
#: the library's validation): one line and exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError,
    OSError,
    zipfile.BadZipFile,
    EOFError,
    FloatingPointError,
    ValueError,
    TypeError,
)


def _setup_logging(quiet: bool) -> int:
    """Log warnings from everything and, unless quiet, INFO from art_jacreg; return the previous art_jacreg level."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    package = logging.getLogger("art_jacreg")
    previous = package.level
    package.setLevel(logging.WARNING if quiet else logging.INFO)
    return previous


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, CLIError):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``art-jacreg`` console script.

    Output paths are checked before any work starts, so a mistyped path never costs a training run. User errors
    (:data:`USER_ERRORS`) end with one line ``art-jacreg COMMAND: error: ...`` on stderr and exit code 2.

    :param argv: Arguments without the program name (default ``sys.argv[1:]``).
    :return: Exit code: 0 on success, 2 on a user error (one line on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_level = _setup_logging(args.quiet)
    try:
        return _COMMANDS[args.command](args)
    except USER_ERRORS as err:
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
    finally:
        if hasattr(args, "previous_threads"):
            import torch

            torch.set_num_threads(args.previous_threads)
        logging.getLogger("art_jacreg").setLevel(previous_level)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
