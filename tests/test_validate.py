"""The one validation vocabulary (art_jacreg._validate) and the old names that delegate to it."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from art_jacreg import _art, _validate, attacks, certify
from art_jacreg.certify import _common

# ----------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("spelling", [2, 2.0, np.int64(2), np.float32(2), "2", "2.0", "l2", "L2", " l2 ", "l_2", "l-2"])
def test_every_spelling_of_l2(spelling):
    assert _validate.validate_norm(spelling) == 2.0
    assert _validate.norm_key(spelling) == "2"
    assert _validate.norm_label(spelling) == "l2" == _validate.norm_label(spelling, ascii_only=True)


@pytest.mark.parametrize(
    "spelling", [np.inf, math.inf, float("inf"), "inf", "INF", "np.inf", "linf", "Linf", "l-inf", "l_inf", "l∞"]
)
def test_every_spelling_of_linf(spelling):
    assert _validate.validate_norm(spelling) == math.inf
    assert _validate.norm_key(spelling) == "inf"
    assert _validate.norm_label(spelling) == "l∞"
    assert _validate.norm_label(spelling, ascii_only=True) == "linf"


@pytest.mark.parametrize("bad", [1, 3, 0, -np.inf, np.nan, True, "l1", "two", "", None, [2]])
def test_unknown_norms_are_refused_with_the_argument_name(bad):
    with pytest.raises(ValueError, match=r"`p` must be 2 or np.inf \(also accepted: '2', 'l2'"):
        _validate.validate_norm(bad, name="p")
    with pytest.raises(ValueError, match="`norm`"):
        _validate.norm_key(bad)


def test_old_names_are_the_one_implementation():
    assert _art.validate_norm is _validate.validate_norm
    assert _art.validate_labels is _validate.validate_labels
    assert _art.validate_eps is _validate.validate_eps
    assert _art.validate_positive_int is _validate.validate_positive_int
    assert certify.METHODS is _validate.METHODS
    assert attacks.validate_attack is _validate.validate_attack and attacks.ATTACKS is _validate.ATTACKS
    assert not hasattr(attacks, "_DEFAULTS")


def test_validate_imports_no_art():
    code = "import sys, art_jacreg._validate; print(any(m == 'art' or m.startswith('art.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------- names, eps, ints


def test_methods_and_attacks():
    assert _validate.validate_method(" Interval ") == "interval"
    assert _validate.validate_attack("APGD") == "apgd"
    with pytest.raises(ValueError, match="`method` must be one of 'lipschitz', 'interval', 'linear', got 'crown'"):
        _validate.validate_method("crown")
    with pytest.raises(ValueError, match="`attack` must be one of 'apgd'"):
        _validate.validate_attack("fgsm")
    with pytest.raises(ValueError, match="`method`"):
        _validate.validate_method(None)


def test_eps():
    assert _validate.validate_eps(np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match="`r` must be a finite number > 0"):
        _validate.validate_eps(0, name="r", allow_zero=False)
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="`eps` must be a finite number >= 0"):
            _validate.validate_eps(bad)
    with pytest.raises(TypeError, match="`eps` must be a real number"):
        _validate.validate_eps("0.1")
    np.testing.assert_array_equal(_validate.validate_eps_per_sample(0.5, 3), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(_validate.validate_eps_per_sample([0.1, 0.2], 2), [0.1, 0.2])
    for bad in ([0.1], [0.1, -0.2], [0.1, np.nan], "a", None):
        with pytest.raises(ValueError, match="`eps` must be a finite number >= 0 or an array of 2"):
            _validate.validate_eps_per_sample(bad, 2)
    per_sample = _common.validate_eps(torch.tensor([0.1, 0.2]), 2)
    assert per_sample.dtype == torch.float64 and per_sample.shape == (2,)


def test_positive_int():
    assert _validate.validate_positive_int(np.int64(3), "n") == 3
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
            _validate.validate_positive_int(bad, "n")


# ----------------------------------------------------------------------------------- labels


def test_labels_indices_and_exact_one_hot():
    np.testing.assert_array_equal(_validate.validate_labels([3, 0], 2, 10), [3, 0])
    np.testing.assert_array_equal(_validate.validate_labels(np.array([[3], [0]]), 2, 10), [3, 0])
    np.testing.assert_array_equal(_validate.validate_labels(np.eye(10)[[3, 0]], 2, 10), [3, 0])
    np.testing.assert_array_equal(_validate.validate_labels(np.eye(10, dtype=bool)[[1]], 1, 10), [1])
    almost = np.eye(10)[[4, 7]] * (1 - 1e-7) + 1e-8  # float rounding within the tolerance
    np.testing.assert_array_equal(_validate.validate_labels(almost, 2, 10), [4, 7])
    assert _validate.validate_labels(np.eye(10, dtype=np.float32)[[2]], 1, 10).dtype == np.int64


@pytest.mark.parametrize(
    ("row", "what"),
    [
        (np.zeros(10), "all-zero"),
        (-np.eye(10)[3], "negated one-hot"),
        (np.full(10, 0.1), "soft labels"),
        (np.eye(10)[3] * 0.9 + np.eye(10)[5] * 0.1, "soft labels"),
        (np.eye(10)[3] + np.eye(10)[5], "multi-hot"),
        (np.eye(10)[3] * 2, "scaled one-hot"),
        (np.eye(10)[3] * (1 + 1e-4), "off by more than the tolerance"),
    ],
)
def test_labels_refuse_rows_that_are_not_one_hot(row, what):
    y = np.eye(10)[[1, 2, 0]]
    y[2] = row
    with pytest.raises(ValueError, match=r"`y_test` is 2-D, so it must be one-hot.*row 2 is \[") as info:
        _validate.validate_labels(y, 3, 10, name="y_test")
    assert "class indices of shape (N,)" in str(info.value), what
    # The certifiers' label validation is the same one.
    with pytest.raises(ValueError, match="`labels` is 2-D, so it must be one-hot.*row 2"):
        _common.validate_labels(torch.as_tensor(y), 3, 10)


def test_labels_other_errors():
    with pytest.raises(ValueError, match=r"out of range: expected values in \[0, 9\]"):
        _validate.validate_labels([0, 10], 2, 10)
    with pytest.raises(ValueError, match="2 labels but there are 3 samples"):
        _validate.validate_labels([0, 1], 3, 10)
    with pytest.raises(ValueError, match="one-hot with 10 columns"):
        _validate.validate_labels(np.zeros((2, 5)), 2, 10)
    with pytest.raises(ValueError, match="integer class indices"):
        _validate.validate_labels([0.5, 1.0], 2, 10)
    with pytest.raises(ValueError, match="NaN or inf"):
        _validate.validate_labels(np.full((1, 10), np.nan), 1, 10)
    with pytest.raises(ValueError, match=r"class indices \(N,\) or one-hot"):
        _validate.validate_labels(np.zeros((1, 1, 10)), 1, 10)
    with pytest.raises(ValueError, match="integer class indices, got dtype"):
        _validate.validate_labels(np.array(["a", "b"]), 2, 10)
    with pytest.raises(ValueError, match="numeric one-hot rows"):
        _validate.validate_labels(np.array([["a"] * 10]), 1, 10)
    t = _common.validate_labels(torch.tensor([1, 2]), 2, 10)
    assert t.dtype == torch.int64 and t.tolist() == [1, 2]


# ----------------------------------------------------------------------------------- arrays


def test_x_against_input_shape():
    x = np.random.default_rng(0).random((2, 1, 4, 4))
    out = _validate.validate_x(x, (1, 4, 4))
    assert out.dtype == np.float32 and out is not x
    with pytest.raises(ValueError, match=r"`x_train` must have shape \(N, 1, 4, 4\) to match input_shape"):
        _validate.validate_x(np.zeros((2, 4, 4)), (1, 4, 4), name="x_train")
    with pytest.raises(ValueError, match="empty"):
        _validate.validate_x(np.zeros((0, 1, 4, 4)), (1, 4, 4))
    with pytest.raises(ValueError, match="`x` contains NaN or inf"):
        _validate.validate_x(np.full((1, 1, 4, 4), np.inf), (1, 4, 4))
    with pytest.raises(TypeError, match="`x` must be a numeric array"):
        _validate.validate_x([["a"]], (1,))


def test_clip_range_refuses_or_warns():
    x = np.full((2, 3), 0.5)
    _validate.check_clip_range(x, (0.0, 1.0))
    _validate.check_clip_range(x * 255, None)
    with pytest.raises(ValueError, match=r"`x` has 6 values outside the classifier's clip_values box \[0, 1\]"):
        _validate.check_clip_range(x * 255, (0.0, 1.0))
    with pytest.warns(UserWarning, match="divide 0..255 pixels by 255"):
        _validate.check_clip_range(x * 255, (0.0, 1.0), error=False)
