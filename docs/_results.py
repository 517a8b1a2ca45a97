"""Turn the harness's results folder (``docs/results/<preset>/``) into fragments that ``results.rst`` includes.

Called by ``conf.py`` when the builder starts. It writes, under ``docs/_generated/`` (not committed):

* ``results_summary.md``: the harness's ``summary.md`` (markdown headings turned into bold lines so they cannot
  clash with the page's own sections), or a note saying the results have not been put in place yet;
* ``results_figures.rst``: one ``.. figure::`` per PNG of the folder, in file-name order;
* ``results_files.rst``: download links to the machine-readable files (CSV, JSON, markdown).

The page therefore builds, warning-free, both before and after the lead copies the results in.
"""

from __future__ import annotations

import re
from pathlib import Path

PRESET = "full"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _demote_headings(markdown: str) -> str:
    out = []
    for line in markdown.splitlines():
        match = _HEADING.match(line)
        out.append(f"**{match.group(2)}**" if match else line)
    return "\n".join(out) + "\n"


#: Captions of the plots that ``art_jacreg.compare.plots`` writes; other PNGs get one made from their file name.
CAPTIONS = {
    "robust_accuracy_vs_eps": "Accuracy under AutoAttack against the radius, per defence (l2 and l-inf panels)",
    "robust_accuracy_vs_training_time": "Accuracy under attack at the reference radius against training time",
    "jacobian_norm_vs_robust_gap": "Mean test Jacobian norm against the robust generalization gap",
}


def _caption(path: Path) -> str:
    return CAPTIONS.get(path.stem) or path.stem.replace("_", " ").replace("-", " ").strip().capitalize()


def write_results_fragments(docs_dir: Path, preset: str = PRESET) -> None:
    """Write the three fragments for ``preset`` (see the module docstring).

    :param docs_dir: The ``docs/`` directory.
    :param preset: Sub-folder of ``docs/results/`` to read.
    """
    results = docs_dir / "results" / preset
    out_dir = docs_dir / "_generated"
    out_dir.mkdir(exist_ok=True)

    summary = results / "summary.md"
    if summary.is_file():
        text = _demote_headings(summary.read_text(encoding="utf-8"))
    else:
        text = (
            "```{note}\n"
            f"The results of the `{preset}` preset have not been added to this build yet: `docs/results/{preset}/"
            "summary.md` is missing. Run the command above and copy its output folder there.\n"
            "```\n"
        )
    _write_if_changed(out_dir / "results_summary.md", text)

    figures = sorted(results.glob("*.png")) if results.is_dir() else []
    lines = []
    for png in figures:
        rel = png.relative_to(docs_dir).as_posix()
        lines += [f".. figure:: /{rel}", "   :width: 100%", "", f"   {_caption(png)}.", ""]
    if not lines:
        lines = [".. note::", "", f"   No figures yet (no PNG files in ``docs/results/{preset}/``).", ""]
    _write_if_changed(out_dir / "results_figures.rst", "\n".join(lines))

    files = sorted(p for p in results.glob("*") if p.suffix in {".csv", ".json", ".md"}) if results.is_dir() else []
    lines = [f"* :download:`{p.name} </{p.relative_to(docs_dir).as_posix()}>`" for p in files]
    if not lines:
        lines = ["* (none yet)"]
    _write_if_changed(out_dir / "results_files.rst", "\n".join(lines) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would make Sphinx re-read the including page on every build.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
