"""
Training from a torch ``DataLoader`` with ``fit_generator``
============================================================

When the data come from a :class:`torch.utils.data.DataLoader` (augmentation, on-the-fly loading, a custom
``Dataset``), wrap it in ART's :class:`~art.data_generators.PyTorchDataGenerator` and call
:meth:`~art_jacreg.trainer.JacobianRegularizedTrainer.fit_generator`, exactly as with ART's own trainers. This example
also shows the :math:`\\ell_\\infty` regulariser :math:`\\|J\\|_{1,1}` estimated from one sampled Jacobian row per
digit (``n_rows=1``), a validation set, and a torch learning-rate scheduler.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from art.data_generators import PyTorchDataGenerator
from torch.utils.data import DataLoader, Dataset

from art_jacreg import JacobianRegularizedTrainer, load_mnist
from art_jacreg.models import make_classifier, mnist_cnn

(x_train, y_train), (x_test, y_test), _, _ = load_mnist()
x_train, y_train = x_train[:2000], y_train[:2000]
x_val, y_val = x_test[:500], y_test[:500]

# %%
# A ``Dataset`` with augmentation
# -------------------------------
# Any map-style dataset works. This one shifts each digit by up to one pixel at random, something the array-based
# ``fit`` cannot do. Labels may be class indices or one-hot; here they are indices.


class ShiftedDigits(Dataset):
    def __init__(self, images, labels, max_shift=1, seed=0):
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.argmax(axis=1))
        self.max_shift = max_shift
        self.rng = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        dx, dy = torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=self.rng).tolist()
        return torch.roll(self.images[index], shifts=(dy, dx), dims=(1, 2)), self.labels[index]


loader = DataLoader(
    ShiftedDigits(x_train, y_train), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
)

# %%
# Wrap it for ART and train
# -------------------------
# ``PyTorchDataGenerator(iterator, size, batch_size)`` is ART's adapter; an epoch is ``ceil(size / batch_size)``
# batches. ``norm=np.inf`` selects the :math:`\|J\|_{1,1}` regulariser; ``n_rows=1`` estimates it without bias from
# one random row of the Jacobian per digit (``n_rows=None`` would compute all 10 rows); ``reg_weight`` keeps its
# default for ``norm=np.inf``. The scheduler is stepped once per epoch.

generator = PyTorchDataGenerator(loader, size=len(x_train), batch_size=128)
classifier = make_classifier(mnist_cnn(seed=0))
scheduler = torch.optim.lr_scheduler.StepLR(classifier.optimizer, step_size=2, gamma=0.5)
trainer = JacobianRegularizedTrainer(classifier, norm=np.inf, n_rows=1, seed=0, verbose=False)
trainer.fit_generator(generator, nb_epochs=3, scheduler=scheduler, validation_data=(x_val, y_val))

for record in trainer.history:
    print(
        f"epoch {record['epoch']}: lr {record['learning_rate']:.1e}, loss {record['loss']:.3f}, "
        f"||J||_1,1 {record['regularizer']:.1f}, train acc {record['train_accuracy']:.3f}, "
        f"val acc {record['val_accuracy']:.3f}, {record['seconds']:.1f} s"
    )

# %%
# The estimate that drove training is unbiased but noisy; ``compute_regularizer`` gives the exact per-digit norm of
# the trained model (all rows, evaluation mode):

exact = trainer.compute_regularizer(x_val[:100])
print(f"exact ||J||_1,1, 100 validation digits: mean {exact.mean():.1f}, range {exact.min():.1f} to {exact.max():.1f}")

# %%
# The history as curves:

epochs = [r["epoch"] for r in trainer.history]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_loss.plot(epochs, [r["cross_entropy"] for r in trainer.history], "o-", label="cross-entropy")
ax_loss.plot(epochs, [r["loss"] for r in trainer.history], "s--", label="cross-entropy + weighted regulariser")
ax_loss.set_xlabel("epoch")
ax_loss.legend(fontsize=8)
ax_acc.plot(epochs, [r["train_accuracy"] for r in trainer.history], "o-", label="train (running)")
ax_acc.plot(epochs, [r["val_accuracy"] for r in trainer.history], "s-", label="validation")
ax_acc.set_xlabel("epoch")
ax_acc.set_ylabel("accuracy")
ax_acc.legend(fontsize=8)
fig.tight_layout()
plt.show()
