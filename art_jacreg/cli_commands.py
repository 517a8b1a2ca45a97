"""The subcommands of ``art-jacreg``: each checks its options and paths, then calls library functions.

Every output path and the data path are checked before any work starts; a user error is a :class:`CLIError`, which
:func:`art_jacreg.cli.main` reports as one line with exit code 2. Torch and the library are imported only when a
command gets to real work, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "cmd_train", "cmd_certify", "cmd_report", "cmd_compare"]


class CLIError(Exception):
    """A user error reported as one line with exit code 2."""


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


def _start_distributed(args: argparse.Namespace) -> bool:
    """Join torchrun's process group for ``--distributed``; refuse a multi-process launch without it.

    :return: Whether this process is the main one (rank 0, or the only process).
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not args.distributed:
        if world > 1:
            raise CLIError(
                f"started by torchrun with {world} processes but without --distributed: each process would train "
                "its own model; add --distributed"
            )
        return True
    from art_jacreg.training.distributed import init_from_torchrun

    try:
        init_from_torchrun()
    except RuntimeError as err:
        raise CLIError(str(err)) from None
    import torch.distributed as dist

    return dist.get_rank() == 0


def cmd_train(args: argparse.Namespace) -> int:
    """The ``train`` subcommand.

    :param args: The parsed arguments.
    :return: The exit code (0).
    :raises CLIError: On a user error.
    """
    if args.certified and args.eps is None:
        raise CLIError("train --certified needs --eps (the radius to certify, e.g. --eps 0.3 with --norm 2).")
    if not args.certified and (args.eps is not None or args.bound != "global" or args.lr_schedule is not None):
        raise CLIError("--eps, --bound and --lr-schedule apply only to train --certified.")
    _check_outputs(out=args.out, checkpoint=args.checkpoint)
    _check_data(args.data)
    _set_threads(args)
    main_process = _start_distributed(args)
    try:
        return _train(args, main_process)
    finally:
        if args.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(args: argparse.Namespace, main_process: bool) -> int:
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
        checkpoint=args.checkpoint,
        certified=None
        if not args.certified
        else {"eps": args.eps, "bound": args.bound, "lr_schedule": args.lr_schedule},
    )
    if not main_process:
        return 0
    save_state_dict(trained.model, args.out)
    test_accuracy = accuracy(trained.classifier, x_test, y_test)
    print(f"trained {trained.describe()}; test accuracy {test_accuracy:.4f} on {len(x_test)} digits")
    print(f"saved state_dict to {args.out}")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    """The ``certify`` subcommand.

    :param args: The parsed arguments.
    :return: The exit code (0).
    :raises CLIError: On a user error.
    """
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
        n_jobs=args.n_jobs,
    )
    print(summary.to_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand.

    :param args: The parsed arguments.
    :return: The exit code (0).
    :raises CLIError: On a user error.
    """
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
        x_test[: args.n],
        y_test[: args.n],
        eps,
        norm=args.norm,
        attack=args.attack,
        method=args.method,
        n_jobs=args.n_jobs,
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


def cmd_compare(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand.

    :param args: The parsed arguments.
    :return: The exit code (0).
    :raises CLIError: On a user error.
    """
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
    for option in ("epochs", "n_train", "attack_iter", "model", "square_queries", "standard_autoattack"):
        if getattr(args, option) is not None:
            changes[option] = getattr(args, option)
    if args.seed is not None:
        changes["seeds"] = (args.seed,)
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            raise CLIError(f"--seeds: repeated seed in {' '.join(map(str, args.seeds))}; give distinct seeds")
        changes["seeds"] = tuple(args.seeds)
    if args.n_attack is not None:
        changes.update(n_attack=args.n_attack, n_certify=args.n_attack, n_jacobian=args.n_attack)
        changes["n_standard"] = min(args.n_attack, protocol.n_standard)
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
    print(result.headline())
    runs = len(result.recomputed_runs)
    print(f"computed {runs}, loaded {len(result.rows) - runs} from cache, {result.seconds:.0f} s")
    print(f"results written to: {result.out_dir.resolve()}")
    return 0
