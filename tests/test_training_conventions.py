"""The ART conventions of :class:`JacobianRegularizedTrainer` and its checks of models and data (issue 10)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from art.data_generators import NumpyDataGenerator
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_jacreg.data import load_mnist
from art_jacreg.models import mnist_mlp
from art_jacreg.norms import frobenius_norm_sq
from art_jacreg.trainer import DEFAULT_REG_WEIGHTS, JacobianRegularizedTrainer


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    (x_train, y_train), _, _, _ = load_mnist()
    return x_train[:128], y_train[:128].argmax(1)


def _weights(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def _classifier(model: nn.Module, loss: nn.Module | None = None, lr: float = 0.1, **kwargs) -> PyTorchClassifier:
    return PyTorchClassifier(
        model,
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        **kwargs,
    )


# --------------------------------------------------------------------------- the classifier's loss


@pytest.mark.parametrize(
    "loss_kwargs",
    [
        {"weight": torch.linspace(0.2, 2.0, 10), "label_smoothing": 0.1, "reduction": "sum"},
        {"ignore_index": 3},
    ],
)
def test_classifiers_cross_entropy_is_used_as_a_mean(data, loss_kwargs) -> None:
    """One full-batch SGD step equals a hand-written step with the loss's weights / smoothing / ignore_index."""
    x, y = data
    reg_weight, lr = 0.05, 0.1
    model = mnist_mlp(seed=0, hidden=16)
    reference = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    clf = _classifier(model, nn.CrossEntropyLoss(**loss_kwargs), lr=lr)
    trainer = JacobianRegularizedTrainer(clf, reg_weight=reg_weight, n_projections=None, seed=0, verbose=False)
    trainer.fit(x, y, batch_size=len(x), nb_epochs=1)

    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    ce_kwargs = {k: v for k, v in loss_kwargs.items() if k != "reduction"}
    loss = F.cross_entropy(reference(x_t), y_t, **ce_kwargs)
    loss = loss + reg_weight * frobenius_norm_sq(reference, x_t, create_graph=True).mean()
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    for got, want in zip(_weights(model), _weights(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The loss's options matter: plain cross-entropy gives other weights.
    JacobianRegularizedTrainer(
        _classifier(plain, lr=lr), reg_weight=reg_weight, n_projections=None, seed=0, verbose=False
    ).fit(x, y, batch_size=len(x), nb_epochs=1)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(_weights(model), _weights(plain), strict=True))


@pytest.mark.parametrize("loss", [nn.NLLLoss(), nn.MSELoss()])
def test_unsupported_loss_is_refused(data, loss) -> None:
    x, y = data
    trainer = JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16), loss), verbose=False)
    with pytest.raises(ValueError, match=r"`classifier.loss`.*CrossEntropyLoss"):
        trainer.fit(x, y, nb_epochs=1)
    assert trainer.compute_regularizer(x[:4]).shape == (4,)  # measuring the regulariser needs no loss


# --------------------------------------------------------------------------- seeds, parameters, defaults


def test_seed_none_follows_the_global_generators(data) -> None:
    x, y = data
    runs = []
    for global_seed in (0, 0, 1):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        clf = _classifier(mnist_mlp(seed=None, hidden=16))
        JacobianRegularizedTrainer(clf, verbose=False).fit(x, y, batch_size=32, nb_epochs=1)
        runs.append(_weights(clf.model))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_get_params_and_set_params_like_art_attacks(data) -> None:
    x, y = data
    trainer = JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16)), verbose=False)
    params = trainer.get_params()
    assert list(params) == trainer.trainer_params
    assert params["norm"] == 2.0 and params["reg_weight"] == DEFAULT_REG_WEIGHTS[2.0] and params["nb_epochs"] is None
    trainer.set_params(norm="inf")  # a default reg_weight follows the norm
    assert trainer.norm == np.inf and trainer.reg_weight == DEFAULT_REG_WEIGHTS[np.inf]
    trainer.set_params(reg_weight=0.5, n_rows=2)
    assert trainer.get_params()["reg_weight"] == 0.5 and trainer.n_rows == 2
    with pytest.raises(ValueError, match="reg_weight"):
        trainer.set_params(reg_weight=-1.0, n_rows=3)
    assert trainer.reg_weight == 0.5 and trainer.n_rows == 2  # nothing changed
    with pytest.raises(ValueError, match="n_rows"):
        trainer.set_params(norm=2)  # n_rows does not apply to norm=2
    assert trainer.norm == np.inf
    with pytest.raises(ValueError, match="unknown_thing"):
        trainer.set_params(unknown_thing=1)
    # A new seed restarts the random streams: same weights as a fresh trainer with that seed.
    results = []
    for make in ("set", "fresh"):
        clf = _classifier(mnist_mlp(seed=0, hidden=16))
        t = JacobianRegularizedTrainer(clf, seed=1 if make == "set" else 5, verbose=False)
        if make == "set":
            t.set_params(seed=5)
        t.fit(x, y, batch_size=32, nb_epochs=1)
        results.append(_weights(clf.model))
    assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))


def test_constructor_nb_epochs_and_batch_size_are_fit_defaults(data) -> None:
    x, y = data
    model = mnist_mlp(hidden=16)
    calls = []
    model[-1].register_forward_hook(lambda m, args, out: calls.append(out.shape[0]) if m.training else None)
    trainer = JacobianRegularizedTrainer(_classifier(model), nb_epochs=2, batch_size=64, verbose=False)
    assert trainer.get_params()["nb_epochs"] == 2 and trainer.get_params()["batch_size"] == 64
    trainer.fit(x, y)
    assert len(trainer.history) == 2 and calls == [64] * 4
    calls.clear()
    trainer.fit(x, y, batch_size=32, nb_epochs=1)  # call arguments override
    assert len(trainer.history) == 1 and calls == [32] * 4
    calls.clear()
    trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=128))
    assert len(trainer.history) == 2 and calls == [128] * 2
    with pytest.raises(ValueError, match="nb_epochs"):
        JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16)), nb_epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16)), batch_size=2.5)


def test_arts_positional_fit_says_what_to_write(data) -> None:
    x, y = data
    trainer = JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16)), verbose=False)
    with pytest.raises(ValueError, match=r"fit\(x, y, batch_size=128, nb_epochs=10\)"):
        trainer.fit(x, y, 128, 10)
    with pytest.raises(ValueError, match=r"fit\(x, y, batch_size=64\)"):
        trainer.fit(x, y, 64)


# --------------------------------------------------------------------------- models and data that cannot train as given


def test_inputs_outside_clip_values_warn(data) -> None:
    x, y = data
    trainer = JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16), lr=1e-4), verbose=False)
    with pytest.warns(UserWarning, match=r"`x`.*clip_values"):
        trainer.fit(x * 255, y, nb_epochs=1)
    with pytest.warns(UserWarning, match=r"`validation_data\[0\]`.*clip_values"):
        trainer.fit(x, y, validation_data=(x * 255, y), nb_epochs=1)
    with pytest.warns(UserWarning, match=r"`generator batch x`.*clip_values") as record:
        trainer.fit_generator(NumpyDataGenerator(x * 255, y, batch_size=32), nb_epochs=1)
    assert sum("generator batch x" in str(w.message) for w in record) == 1  # once per fit, not per batch


def test_model_ending_in_softmax_warns(data) -> None:
    x, y = data
    model = nn.Sequential(mnist_mlp(hidden=16), nn.Softmax(dim=1))
    trainer = JacobianRegularizedTrainer(_classifier(model), verbose=False)
    with pytest.warns(UserWarning, match="Softmax"):
        trainer.fit(x, y, nb_epochs=1)


def test_logits_are_checked_for_softmax_only_once(data, recwarn) -> None:
    x, y = data
    JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16)), verbose=False).fit(x, y, nb_epochs=1)
    assert not [w for w in recwarn if "Softmax" in str(w.message)]


@pytest.mark.parametrize("n_out", [5, 12])
def test_logit_count_other_than_nb_classes_is_refused(data, n_out) -> None:
    x, y = data
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, n_out))
    before = _weights(model)
    trainer = JacobianRegularizedTrainer(_classifier(model), verbose=False)
    with pytest.raises(ValueError, match=rf"{n_out} logits.*`classifier.nb_classes` is 10"):
        trainer.fit(x, y, nb_epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))


def test_double_model_is_refused_with_advice(data) -> None:
    x, y = data
    trainer = JacobianRegularizedTrainer(_classifier(mnist_mlp(hidden=16).double()), verbose=False)
    with pytest.raises(ValueError, match=r"float64.*model\.float\(\)"):
        trainer.fit(x, y, nb_epochs=1)
    with pytest.raises(ValueError, match=r"model\.float\(\)"):
        trainer.compute_regularizer(x[:4])


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def test_batchnorm_model_skips_a_last_batch_of_one(data, caplog) -> None:
    x, y = data
    x, y = np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]])  # 129 samples: batches 64, 64, 1
    model = _bn_model()
    trainer = JacobianRegularizedTrainer(_classifier(model), seed=0, verbose=False)
    with caplog.at_level(logging.WARNING, logger="art_jacreg.trainer"):
        trainer.fit(x, y, batch_size=64, nb_epochs=2)
    notes = [r.getMessage() for r in caplog.records if "batch of 1 sample" in r.getMessage()]
    assert len(notes) == 1 and "BatchNorm" in notes[0]
    assert len(trainer.history) == 2 and all(np.isfinite(h["loss"]) for h in trainer.history)
    with pytest.raises(ValueError, match="`batch_size`.*BatchNorm"):
        trainer.fit(x, y, batch_size=1, nb_epochs=1)
    with pytest.raises(ValueError, match="`generator.batch_size`.*BatchNorm"):
        trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=1), nb_epochs=1)


def test_preprocessing_with_zero_std_is_named(data) -> None:
    x, y = data
    clf = _classifier(mnist_mlp(hidden=16), preprocessing=(0.1307, 0.0))
    trainer = JacobianRegularizedTrainer(clf, verbose=False)
    with pytest.raises(ValueError, match=r"`classifier.preprocessing`.*standard deviation of 0"):
        trainer.fit(x, y, nb_epochs=1)
