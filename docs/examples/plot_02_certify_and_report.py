"""
Certify and report: estimates, certificates and attacks side by side
=====================================================================

:class:`~art_jacreg.reporter.JacobianBoundReporter` wraps a trained ART classifier and puts four kinds of numbers
next to each other for every test digit (:doc:`/guide/bounds`):

* the clean cross-entropy (*exact*);
* the paper's first-order robust loss and its Jacobian surrogate (*first-order estimates*, which an attack may beat);
* a sound upper bound on the loss over the whole ball, and whether the prediction is certified (*sound
  certificates*, which no attack can beat);
* the loss a real attack reached (*empirical*, a lower bound on the true robust loss).

A Jacobian-regularised and a plainly trained model are compared on the same digits.
"""

import matplotlib.pyplot as plt
import numpy as np

from art_jacreg import JacobianBoundReporter, JacobianRegularizedTrainer, load_mnist
from art_jacreg.models import make_classifier, mnist_cnn
from art_jacreg.trainer import DEFAULT_REG_WEIGHTS

(x_train, y_train), (x_test, y_test), _, _ = load_mnist()
x_train, y_train = x_train[:3000], y_train[:3000]
x_eval, y_eval = x_test[:50], y_test[:50]

# %%
# Two models to compare
# ---------------------
# The same CNN, trained for 3 epochs with and without the :math:`\|J\|_F^2` regulariser. Three epochs are short, so
# the regularised model uses ten times the default weight to make its effect visible.

plain = make_classifier(mnist_cnn(seed=0))
plain.fit(x_train, y_train, nb_epochs=3, batch_size=128, verbose=False)

regularised = make_classifier(mnist_cnn(seed=0))
weight = 10 * DEFAULT_REG_WEIGHTS[2.0]
JacobianRegularizedTrainer(regularised, norm=2, reg_weight=weight, seed=0, verbose=False).fit(
    x_train, y_train, nb_epochs=3, batch_size=128
)
print(f"reg_weight = {weight:g}")

# %%
# Certified radii
# ---------------
# ``certify`` returns each digit's prediction and the largest :math:`\ell_2` radius (in pixel units) on which that
# prediction provably cannot change. ``"lipschitz"`` uses one global constant per model; ``"interval"`` bounds the
# Jacobian locally and is never looser (it starts from the global radius). The third method, ``"linear"``
# (CROWN bounds), is the tightest but takes about a second per digit on a CPU, too slow for this page.

reporters = {
    "plain": JacobianBoundReporter.from_classifier(plain, verbose=False),
    "Jacobian-regularised": JacobianBoundReporter.from_classifier(regularised, verbose=False),
}
radii = {}
for name, reporter in reporters.items():
    for method in ("lipschitz", "interval"):
        prediction, radius = reporter.certify(x_eval, norm=2, method=method)
        radii[name, method] = radius
        print(f"{name:<22} {method:<9}: median certified radius {np.median(radius):.4f}, max {radius.max():.4f}")

# %%
# The report
# ----------
# ``report`` evaluates everything at one radius. The attack is ART's APGD (cross-entropy); 20 iterations keep the
# example fast, the default is 100.

EPS = 0.3
reports = {
    name: reporter.report(x_eval, y_eval, eps=EPS, norm=2, method="interval", attack_params={"max_iter": 20})
    for name, reporter in reporters.items()
}
print(reports["Jacobian-regularised"].to_markdown(max_rows=8))

# %%
# The summaries, side by side. ``first_order_exceeded`` counts digits on which the attack beat the paper's
# first-order estimate (expected at finite radii); ``certificate_violations`` counts digits on which it beat the
# certificate, and must be 0. After three epochs on 3,000 digits both models are far from converged, so do not read
# much into their differences here; :doc:`/results` compares fully trained models.

keys = [
    "clean_accuracy",
    "certified_accuracy",
    "attacked_accuracy",
    "mean_loss",
    "mean_first_order_loss",
    "mean_jacobian_surrogate_loss",
    "mean_certified_loss_bound",
    "mean_attack_loss",
    "first_order_exceeded",
    "certificate_violations",
]
summaries = {name: report.summary() for name, report in reports.items()}
print(f"{'':<30}" + "".join(f"{name:>22}" for name in summaries))
for key in keys:
    print(f"{key:<30}" + "".join(f"{summaries[name][key]:>22.4g}" for name in summaries))

# %%
# Per-digit view
# --------------
# Each digit's losses for the regularised model, sorted by the attack loss. The exact loss and the attack lie below
# the certified bound on every digit; the first-order estimates usually track the attack but can fall below it.

report = reports["Jacobian-regularised"]
order = np.argsort(report.attack_loss)
fig, (ax_loss, ax_radius) = plt.subplots(1, 2, figsize=(10, 3.8))
ax_loss.plot(report.loss[order], ".", label="clean loss (exact)")
ax_loss.plot(report.first_order_loss[order], "x", label="first-order loss (estimate)")
ax_loss.plot(report.jacobian_surrogate_loss[order], "+", label="Jacobian surrogate (estimate)")
ax_loss.plot(report.attack_loss[order], "o", mfc="none", label="APGD loss (empirical)")
ax_loss.plot(report.certified_loss_bound[order], "v", label="certified bound (sound)")
ax_loss.set_yscale("log")
ax_loss.set_xlabel("test digit (sorted by attack loss)")
ax_loss.set_ylabel(f"cross-entropy on the l2 ball, eps={EPS}")
ax_loss.legend(fontsize=7)

bins = np.linspace(0, max(r.max() for r in radii.values()) * 1.05 + 1e-9, 30)
for name in reporters:
    ax_radius.hist(radii[name, "interval"], bins=bins, alpha=0.6, label=name)
ax_radius.set_xlabel("certified l2 radius (method='interval')")
ax_radius.set_ylabel("test digits")
ax_radius.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Saving the report
# -----------------
# A report can be written as CSV or JSON (each column keeps its kind) and read back with
# :meth:`~art_jacreg.bound_report.BoundReport.from_csv` / :meth:`~art_jacreg.bound_report.BoundReport.from_json`:
#
# .. code-block:: python
#
#     report.to_csv("bound_report.csv")
#     report.to_json("bound_report.json")
