"""
The generalization report
=========================

Wu and Li (2024) bound the robust generalization gap of a Jacobian-regularised network by complexity terms that grow
with its layer norms and its Jacobian norms (:doc:`/theory`). Those bounds are far too large to evaluate usefully on
a real network, but their ingredients, and the gaps they are about, can be measured.
:func:`~art_jacreg.generalization.generalization_report` does that for one classifier:

* per-layer spectral norms (sound upper bounds), Frobenius norms and their products;
* the spectral complexity :math:`R_A` of Bartlett, Foster and Telgarsky (2017) and the margin-bound term
  :math:`R_A\\|X\\|_F/(\\gamma n)`, flagged **vacuous** when it exceeds 1;
* the mean Jacobian norms on training and test data;
* the standard and robust (attack-evaluated) generalization gaps.

Here three copies of one CNN are trained with increasing ``reg_weight`` and compared.
"""

import matplotlib.pyplot as plt
import numpy as np

from art_jacreg import JacobianRegularizedTrainer, load_mnist
from art_jacreg.generalization import generalization_report
from art_jacreg.models import make_classifier, mnist_cnn
from art_jacreg.trainer import DEFAULT_REG_WEIGHTS

(x_train, y_train), (x_test, y_test), _, _ = load_mnist()
x_train, y_train = x_train[:1500], y_train[:1500]
x_test, y_test = x_test[:300], y_test[:300]

# %%
# Three models
# ------------
# ``reg_weight=0`` is plain training through the same loop; then the default weight for ``norm=2`` and ten times it.
# A small training set and several epochs make the gaps visible quickly.

default = DEFAULT_REG_WEIGHTS[2.0]
weights = [0.0, default, 10 * default]
classifiers = {}
for weight in weights:
    classifier = make_classifier(mnist_cnn(seed=0))
    trainer = JacobianRegularizedTrainer(classifier, norm=2, reg_weight=weight, seed=0, verbose=False)
    trainer.fit(x_train, y_train, nb_epochs=4, batch_size=64)
    classifiers[weight] = classifier
    print(f"reg_weight {weight:g}: final training accuracy {trainer.history[-1]['train_accuracy']:.3f}")

# %%
# One report
# ----------
# The robust gaps use ART's APGD at an :math:`\ell_2` radius of 1.0 (pixel units), with 10 iterations to keep the page
# fast. The training-side numbers are measured on 300 of the training digits.

EPS = {"2": 1.0}
reports = {
    weight: generalization_report(
        clf, x_train[:300], y_train[:300], x_test, y_test, eps=EPS, attack="apgd", attack_params={"max_iter": 10}
    )
    for weight, clf in classifiers.items()
}
print(reports[default].to_markdown())

# %%
# Side by side
# ------------
# The table below puts the headline numbers of the three reports next to each other. Positive gaps mean the model
# does worse on test data than on training data.

rows = [
    ("mean ||J||_F (train)", lambda r: r.jacobian_train["frobenius"]),
    ("mean ||J||_F (test)", lambda r: r.jacobian_test["frobenius"]),
    ("spectral product", lambda r: r.spectral_product),
    ("margin-bound term", lambda r: r.margin_bound),
    ("vacuous", lambda r: r.vacuous),
    ("standard loss gap", lambda r: r.standard_gap.loss_gap),
    ("standard accuracy gap", lambda r: r.standard_gap.accuracy_gap),
    ("robust loss gap", lambda r: r.robust_gaps["2"].loss_gap),
    ("robust accuracy gap", lambda r: r.robust_gaps["2"].accuracy_gap),
    ("robust test accuracy", lambda r: r.robust_gaps["2"].accuracy_test),
]


def fmt(value):
    return str(value) if isinstance(value, bool) else f"{value:.4g}"


print(f"{'reg_weight':<24}" + "".join(f"{w:>12g}" for w in weights))
for name, get in rows:
    print(f"{name:<24}" + "".join(f"{fmt(get(reports[w])):>12}" for w in weights))

# %%
# The same as bars. The theory predicts the direction of each panel, not its size: a larger weight should give
# smaller Jacobian norms, and smaller Jacobian norms should go with smaller gaps and better robust test accuracy.
# On a run this small, with a weak attack, expect the trend to be noisy.

labels = [f"{w:g}" for w in weights]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
pos = np.arange(len(weights))
axes[0].bar(pos - 0.2, [reports[w].jacobian_train["frobenius"] for w in weights], width=0.4, label="train")
axes[0].bar(pos + 0.2, [reports[w].jacobian_test["frobenius"] for w in weights], width=0.4, label="test")
axes[0].set_title("mean ||J||_F", fontsize=10)
axes[0].legend(fontsize=8)
axes[1].bar(pos - 0.2, [reports[w].standard_gap.loss_gap for w in weights], width=0.4, label="standard")
axes[1].bar(pos + 0.2, [reports[w].robust_gaps["2"].loss_gap for w in weights], width=0.4, label="robust (APGD)")
axes[1].set_title("loss gap (test - train)", fontsize=10)
axes[1].legend(fontsize=8)
axes[2].bar(pos - 0.2, [reports[w].standard_gap.accuracy_test for w in weights], width=0.4, label="clean")
axes[2].bar(pos + 0.2, [reports[w].robust_gaps["2"].accuracy_test for w in weights], width=0.4, label="under APGD")
axes[2].set_title("test accuracy", fontsize=10)
axes[2].set_ylim(0, 1)
axes[2].legend(fontsize=8)
for ax in axes:
    ax.set_xticks(pos, labels)
    ax.set_xlabel("reg_weight")
fig.tight_layout()
plt.show()
