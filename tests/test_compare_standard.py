"""AutoAttack's standard version as the harness runs it: every point it reports broken is broken inside the ball."""

from __future__ import annotations

import numpy as np
import torch

from art_jacreg.compare.standard_attack import STANDARD_ATTACKS, standard_autoattack
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_cnn


def test_standard_autoattack_breaks_a_plain_model_and_leaves_it_as_found():
    (x, y), _, _, _ = load_mnist()
    model = mnist_cnn(seed=0)
    make_classifier(model).fit(x[:512], y[:512], batch_size=64, nb_epochs=1, verbose=False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xs, ys = x[1000:1016], y[1000:1016].argmax(1)
    with torch.no_grad():
        clean = model.eval()(torch.from_numpy(xs)).argmax(1).numpy() == ys
    model.train()
    out = standard_autoattack(model, xs, ys, eps=0.3, norm=np.inf, square_queries=20, seed=0)
    robust = out["robust"]
    assert robust.shape == (16,) and not (robust & ~clean).any()  # never robust where the clean point is wrong
    assert robust.sum() < clean.sum()  # l-inf 0.3 breaks a plain MNIST model
    assert set(out["broken_by"]) == set(STANDARD_ATTACKS)
    assert sum(out["broken_by"].values()) == clean.sum() - robust.sum()
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
