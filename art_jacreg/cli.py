"""Command line: ``art-jacreg train | certify | report | compare``.

The CLI only parses arguments (:mod:`art_jacreg.cli_parser`) and calls the library (:mod:`art_jacreg.workflows`,
:mod:`art_jacreg.checkpoints`, :mod:`art_jacreg.compare`) from the subcommands of :mod:`art_jacreg.cli_commands`;
this module is the entry point: logging, dispatch and the one-line error report. Every output path is checked before
any work starts. Errors the user can fix (bad paths or files, unknown defences, invalid eps, a diverging learning
rate) end with exit code 2 and a one-line message on stderr, without a traceback.
"""

from __future__ import annotations

import logging
import sys
import zipfile
from collections.abc import Sequence

from art_jacreg.cli_commands import CLIError, cmd_certify, cmd_compare, cmd_report, cmd_train
from art_jacreg.cli_parser import ATTACK_CHOICES, METHOD_CHOICES, PROG, build_parser

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser", "CLIError", "USER_ERRORS", "PROG", "METHOD_CHOICES", "ATTACK_CHOICES"]


#: The function of every subcommand (``args -> exit code``).
_COMMANDS = {"train": cmd_train, "certify": cmd_certify, "report": cmd_report, "compare": cmd_compare}

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
