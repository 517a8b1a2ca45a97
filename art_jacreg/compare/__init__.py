"""A harness comparing Jacobian regularization with ART's adversarial trainers on MNIST.

Every defence trains the same model (``mnist_cnn`` or ``mnist_maxpool_cnn``) with the same optimizer and epoch
budget, once per seed; every trained model is evaluated identically (clean, AutoAttack sweep, optionally the standard
AutoAttack, certificates, Jacobian norms, generalization gaps). Results are cached per (defence, seed), so an
interrupted run resumes; the run writes ``results.json``, ``results.csv``, ``summary.md``, ``headline.md`` and four
PNG plots.

Modules: :mod:`~.registry` (what a defence is), :mod:`~.adapters`, :mod:`~.ibp`, :mod:`~.certified` (how each is
trained, with its settings), :mod:`~.catalogue` (the built-in defences), :mod:`~.training`, :mod:`~.protocol`,
:mod:`~.evaluation`, :mod:`~.standard_attack`, :mod:`~.stats` (seeds, noise rule, Pareto front),
:mod:`~.results` (cache and files), :mod:`~.headline`, :mod:`~.summary`, :mod:`~.plots`, :mod:`~.runner`.

Example::

    from art_jacreg.compare import run_comparison
    result = run_comparison("quick", out_dir="results/quick")
    print(result.headline())
"""

from __future__ import annotations

from art_jacreg.compare.defences import (
    ADAPTATIONS,
    DEFENCES,
    DefenceSpec,
    TrainContext,
    TrainOutcome,
    get_defence,
    list_defences,
    register_defence,
    train_defence,
)
from art_jacreg.compare.evaluation import evaluate_model, load_data
from art_jacreg.compare.headline import aggregate_rows, headline_text
from art_jacreg.compare.plots import make_plots
from art_jacreg.compare.protocol import PRESETS, Protocol, get_preset
from art_jacreg.compare.registry import SETTINGS
from art_jacreg.compare.results import cache_path, config_hash, load_cached, save_cached, to_markdown, write_outputs
from art_jacreg.compare.runner import ComparisonResult, default_out_dir, run_comparison
from art_jacreg.compare.stats import Estimate, differs, estimate, pareto_front
from art_jacreg.compare.training import MODELS

__all__ = [
    "ADAPTATIONS",
    "DEFENCES",
    "MODELS",
    "PRESETS",
    "SETTINGS",
    "ComparisonResult",
    "DefenceSpec",
    "Estimate",
    "Protocol",
    "TrainContext",
    "TrainOutcome",
    "aggregate_rows",
    "cache_path",
    "config_hash",
    "default_out_dir",
    "differs",
    "estimate",
    "evaluate_model",
    "get_defence",
    "get_preset",
    "headline_text",
    "list_defences",
    "load_cached",
    "load_data",
    "make_plots",
    "pareto_front",
    "register_defence",
    "run_comparison",
    "save_cached",
    "to_markdown",
    "train_defence",
    "write_outputs",
]
