"""Write the ``--help`` text of ``art-jacreg`` and its subcommands to ``docs/_generated/cli_help.txt`` at build time.

The CLI page includes that file, so it always shows the options of the installed code.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

SUBCOMMANDS = ("train", "certify", "report", "compare")


def _help(args: list[str]) -> str:
    from art_jacreg.cli import build_parser

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return buffer.getvalue().rstrip() + "\n"


def write_cli_help(docs_dir: Path) -> None:
    """Write the help of the main command and every subcommand, one after the other.

    :param docs_dir: The ``docs/`` directory.
    """
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal width; fix it for reproducible pages
    parts = ["$ art-jacreg --help", _help([])]
    for name in SUBCOMMANDS:
        parts += [f"$ art-jacreg {name} --help", _help([name])]
    out = docs_dir / "_generated"
    out.mkdir(exist_ok=True)
    text = "\n".join(parts)
    path = out / "cli_help.txt"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
