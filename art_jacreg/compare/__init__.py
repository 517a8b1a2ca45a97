"""A harness comparing Jacobian regularization with ART's adversarial trainers on MNIST.

Every defence trains the same model (``mnist_cnn``) from the same seed with the same optimizer and epoch budget;
every trained model is evaluated identically (clean, AutoAttack sweep, certificates, Jacobian norms, generalization
gaps). Results are cached per defence, so an interrupted run resumes; the run writes ``results.json``,
``results.csv``, ``summary.md`` and three PNG plots.

Example::

    from art_jacreg.compare import run_comparison
    result = run_comparison("quick", out_dir="results/quick")
    print(result.paths["markdown"].read_text())
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
from art_jacreg.compare.plots import make_plots
from art_jacreg.compare.protocol import PRESETS, Protocol, evaluate_model, get_preset, load_data
from art_jacreg.compare.results import cache_path, config_hash, load_cached, save_cached, to_markdown, write_outputs
from art_jacreg.compare.runner import ComparisonResult, default_out_dir, run_comparison

__all__ = [
    "ADAPTATIONS",
    "DEFENCES",
    "PRESETS",
    "ComparisonResult",
    "DefenceSpec",
    "Protocol",
    "TrainContext",
    "TrainOutcome",
    "cache_path",
    "config_hash",
    "default_out_dir",
    "evaluate_model",
    "get_defence",
    "get_preset",
    "list_defences",
    "load_cached",
    "load_data",
    "make_plots",
    "register_defence",
    "run_comparison",
    "save_cached",
    "to_markdown",
    "train_defence",
    "write_outputs",
]
