"""
Drop-in replacement for ART's ``AdversarialTrainer``
=====================================================

An existing ART script trains a PyTorch classifier with PGD adversarial training. Replacing its trainer by
:class:`~art_jacreg.trainer.JacobianRegularizedTrainer` is a one-line change: the classifier, the data, the ``fit``
call and the evaluation stay as they are. Below, the same small CNN is trained three ways on the same digits
(plain, PGD adversarial training, Jacobian regularization) and each is evaluated with the same :math:`\\ell_2` PGD
attack.

To stay within a minute on two cores this uses 2,000 training digits and 3 epochs; the numbers are those of a quick
run, not of tuned models (:doc:`/results` has the full comparison).
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainer

from art_jacreg import JacobianRegularizedTrainer, load_mnist
from art_jacreg.models import make_classifier, mnist_cnn

np.random.seed(0)  # ART's trainer and attacks draw from numpy's and torch's global generators
torch.manual_seed(0)
(x_train, y_train), (x_test, y_test), _, _ = load_mnist()  # embedded MNIST subset, no network
x_train, y_train = x_train[:2000], y_train[:2000]
x_test, y_test = x_test[:200], y_test[:200]
EPS = 1.5  # l2 radius in pixel units ([0, 1] images), as in the trainer's defaults

# %%
# The ART script as it was
# ------------------------
# ``make_classifier`` wraps the model in an ordinary ART ``PyTorchClassifier`` (cross-entropy, Adam, ``clip_values``
# ``(0, 1)``). The trainer is ART's own ``AdversarialTrainer`` with a PGD attack; half of every batch is replaced by
# adversarial examples.

classifier_at = make_classifier(mnist_cnn(seed=0))
pgd_train = ProjectedGradientDescent(
    classifier_at, norm=2, eps=EPS, eps_step=0.75, max_iter=3, batch_size=128, verbose=False
)
trainer = AdversarialTrainer(classifier_at, attacks=pgd_train, ratio=0.5)
start = time.perf_counter()
trainer.fit(x_train, y_train, nb_epochs=3, batch_size=128)
seconds_at = time.perf_counter() - start

# %%
# The same script with Jacobian regularization
# --------------------------------------------
# Only the trainer line changes. ``norm=2`` selects the paper's :math:`\|J\|_F^2` regulariser for :math:`\ell_2`
# threats; its weight ``reg_weight`` is left at the default for ``norm=2``. No attack runs during training.

classifier_jr = make_classifier(mnist_cnn(seed=0))
trainer = JacobianRegularizedTrainer(classifier_jr, norm=2, seed=0, verbose=False)
print(f"reg_weight = {trainer.reg_weight}")
start = time.perf_counter()
trainer.fit(x_train, y_train, nb_epochs=3, batch_size=128)
seconds_jr = time.perf_counter() - start

# %%
# Unlike ART's trainers, ``fit`` keeps a per-epoch history: the cross-entropy, the (unweighted) regulariser and the
# running training accuracy.

for record in trainer.history:
    print(
        f"epoch {record['epoch']}: cross-entropy {record['cross_entropy']:.3f}, "
        f"||J||_F^2 {record['regularizer']:.2f}, train accuracy {record['train_accuracy']:.3f}, "
        f"{record['seconds']:.1f} s"
    )

# %%
# A plain baseline, trained by the classifier's own ``fit``:

classifier_plain = make_classifier(mnist_cnn(seed=0))
start = time.perf_counter()
classifier_plain.fit(x_train, y_train, nb_epochs=3, batch_size=128, verbose=False)
seconds_plain = time.perf_counter() - start

# %%
# Evaluation with one attack for all
# ----------------------------------
# The trained classifiers are ordinary ART estimators, so any ART attack evaluates them. Here: :math:`\ell_2` PGD
# with the training radius, 10 steps.


def accuracy(classifier, x, y):
    return float(np.mean(classifier.predict(x).argmax(axis=1) == y.argmax(axis=1)))


rows = []
for name, clf, seconds in [
    ("plain", classifier_plain, seconds_plain),
    ("ART AdversarialTrainer (PGD)", classifier_at, seconds_at),
    ("JacobianRegularizedTrainer", classifier_jr, seconds_jr),
]:
    attack = ProjectedGradientDescent(clf, norm=2, eps=EPS, eps_step=0.3, max_iter=10, batch_size=200, verbose=False)
    x_adv = attack.generate(x_test)
    rows.append((name, accuracy(clf, x_test, y_test), accuracy(clf, x_adv, y_test), seconds))

print(f"{'trainer':<30} {'clean acc':>9} {'PGD acc':>8} {'train s':>8}")
for name, clean, robust, seconds in rows:
    print(f"{name:<30} {clean:>9.3f} {robust:>8.3f} {seconds:>8.1f}")

# %%
# Plot the comparison: accuracy on clean and attacked test digits, and training time. (The times are measured while
# the documentation builds, on whatever machine builds it; only their ratios mean something.)

names = ["plain", "ART\nAdversarialTrainer", "Jacobian\nregularization"]
fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [2, 1]})
pos = np.arange(len(rows))
ax_acc.bar(pos - 0.2, [r[1] for r in rows], width=0.4, label="clean")
ax_acc.bar(pos + 0.2, [r[2] for r in rows], width=0.4, label=f"PGD-l2, eps={EPS}")
ax_acc.set_xticks(pos, names, fontsize=8)
ax_acc.set_ylabel("test accuracy (200 digits)")
ax_acc.set_ylim(0, 1)
ax_acc.legend(loc="lower left", fontsize=8)
ax_time.bar(pos, [r[3] for r in rows], color="gray")
ax_time.set_xticks(pos, ["plain", "ART AT", "JR"], fontsize=8)
ax_time.set_ylabel("training seconds (3 epochs)")
fig.tight_layout()
plt.show()

# %%
# What changed, line by line
# --------------------------
#
# .. code-block:: diff
#
#     -from art.defences.trainer import AdversarialTrainer
#     +from art_jacreg import JacobianRegularizedTrainer
#     -pgd = ProjectedGradientDescent(classifier, norm=2, eps=1.5, eps_step=0.75, max_iter=3)
#     -trainer = AdversarialTrainer(classifier, attacks=pgd, ratio=0.5)
#     +trainer = JacobianRegularizedTrainer(classifier, norm=2)
#      trainer.fit(x_train, y_train, nb_epochs=3, batch_size=128)
#
# ``fit`` also accepts ``validation_data=(x_val, y_val)`` and an LR ``scheduler`` (any torch scheduler, including
# ``StepLR``, which ART's TRADES and AWP trainers reject), and ``trainer.predict`` / ``trainer.get_classifier()`` work
# as for ART's trainers. For :math:`\ell_\infty` threats use ``norm=np.inf`` (the :math:`\|J\|_{1,1}` regulariser).
