"""Turn the harness's results folders (``docs/results/<preset>/<model>/``) into fragments that ``results.rst``
includes.

Called by ``conf.py`` when the builder starts. For each model of :data:`MODELS` it writes, under
``docs/_generated/`` (not committed):

* ``results_headline_<model>.md``: the harness's ``headline.md`` (the headline table), or a note;
* ``results_summary_<model>.md``: its ``summary.md`` (markdown headings turned into bold lines so they cannot clash
  with the page's own sections), or a note saying the results have not been put in place yet;
* ``results_figures_<model>.rst``: one ``.. figure::`` per PNG of the folder, in file-name order;
* ``results_files_<model>.rst``: download links to the machine-readable files (CSV, JSON, markdown).

A model whose folder is still empty gets a note instead, so the page builds, warning-free, before and after its
results are put in place.
"""

from __future__ import annotations

import re
from pathlib import Path

PRESET = "full"
MODELS = ("mnist_cnn", "mnist_maxpool_cnn")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")

#: Captions of the plots that ``art_jacreg.compare.plots`` writes; other PNGs get one made from their file name.
CAPTIONS = {
    "robust_accuracy_vs_eps": "Accuracy under the fast AutoAttack pair against the radius, per defence (mean over "
    "seeds; l2 and l-inf panels)",
    "robust_accuracy_vs_training_time": "Pareto plots, one per threat model: training seconds per epoch against "
    "accuracy under attack at the headline radius; error bars one std over seeds, the non-dominated defences joined, "
    "numbers explained under the panels",
    "certified_accuracy_vs_training_time": "Certified accuracy at the certified headline radius against training cost",
    "jacobian_norm_vs_robust_gap": "Mean test Jacobian norm against the robust generalization gap (every seed)",
}


def _demote_headings(markdown: str) -> str:
    out = []
    for line in markdown.splitlines():
        match = _HEADING.match(line)
        out.append(f"**{match.group(2)}**" if match else line)
    return "\n".join(out) + "\n"


def _caption(path: Path) -> str:
    return CAPTIONS.get(path.stem) or path.stem.replace("_", " ").replace("-", " ").strip().capitalize()


def _note(text: str) -> str:
    return "```{note}\n" + text + "\n```\n"


def write_results_fragments(docs_dir: Path, preset: str = PRESET) -> None:
    """Write the fragments of every model for ``preset`` (see the module docstring).

    :param docs_dir: The ``docs/`` directory.
    :param preset: Sub-folder of ``docs/results/`` to read.
    """
    out_dir = docs_dir / "_generated"
    out_dir.mkdir(exist_ok=True)
    for model in MODELS:
        results = docs_dir / "results" / preset / model
        missing = _note(
            f"The `{preset}` results for `{model}` have not been added to this build yet: "
            f"`docs/results/{preset}/{model}/` is empty. Run the command above and copy its output folder there."
        )
        headline = results / "headline.md"
        if headline.is_file():
            text = headline.read_text(encoding="utf-8")
        else:
            text = missing
        _write_if_changed(out_dir / f"results_headline_{model}.md", text)
        summary = results / "summary.md"
        text = _demote_headings(summary.read_text(encoding="utf-8")) if summary.is_file() else missing
        _write_if_changed(out_dir / f"results_summary_{model}.md", text)

        figures = sorted(results.glob("*.png")) if results.is_dir() else []
        lines = []
        for png in figures:
            rel = png.relative_to(docs_dir).as_posix()
            lines += [f".. figure:: /{rel}", "   :width: 100%", "", f"   {_caption(png)}.", ""]
        if not lines:
            lines = [".. note::", "", f"   No figures yet (no PNG files in ``docs/results/{preset}/{model}/``).", ""]
        _write_if_changed(out_dir / f"results_figures_{model}.rst", "\n".join(lines))

        files = sorted(p for p in results.glob("*") if p.suffix in {".csv", ".json", ".md"}) if results.is_dir() else []
        lines = [f"* :download:`{p.name} </{p.relative_to(docs_dir).as_posix()}>`" for p in files] or ["* (none yet)"]
        _write_if_changed(out_dir / f"results_files_{model}.rst", "\n".join(lines) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would make Sphinx re-read the including page on every build.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
