"""Seeds aggregation, the noise rule, the Pareto front, the headline table, the IBP schedule and the validation of
seeds and models: pure functions on hand-made rows, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from art_jacreg.cli import main
from art_jacreg.compare import Protocol, estimate, headline_text, pareto_front
from art_jacreg.compare.headline import aggregate_rows
from art_jacreg.compare.ibp import FINAL_CERTIFIED_WEIGHT, GowalRamp, ibp_schedules
from art_jacreg.compare.plots import overlaps
from art_jacreg.compare.stats import compare, differs
from art_jacreg.compare.summary import findings, standard_gap

PROTOCOL = Protocol(eps_l2=(1.0, 1.5), eps_linf=(0.1, 0.3), cert_eps_l2=(0.3,), cert_eps_linf=(0.1,))


def _row(name, seed, spe, clean, l2, linf, trainer="fgsm", norm="inf", status="ok"):
    return {
        "defence": name,
        "seed": seed,
        "model": "mnist_cnn",
        "trainer": trainer,
        "norm": norm,
        "train_eps": 0.1 if trainer not in ("jr", "plain") else None,
        "status": status,
        "seconds_per_epoch": spe,
        "train_seconds": 3 * spe,
        "clean_accuracy": clean,
        "robust_accuracy": {"2": {"1": l2 + 0.1, "1.5": l2}, "inf": {"0.1": linf + 0.1, "0.3": linf}},
        "certified_accuracy": {"2": {"0.3": 0.2}, "inf": {"0.1": 0.05}},
        "error": None if status == "ok" else "ValueError: boom",
        "stage": None if status == "ok" else "train",
    }


def _meta(protocol=PROTOCOL):
    return {"protocol": {**protocol.evaluation_config(), "seeds": list(protocol.seeds)}, "seeds": [0, 1, 2]}


def test_estimate_is_mean_and_sample_std_over_seeds():
    est = estimate([0.70, 0.74, 0.72])
    assert est.mean == pytest.approx(0.72)
    assert est.std == pytest.approx(np.std([0.70, 0.74, 0.72], ddof=1))
    assert est.n == 3 and est.se == pytest.approx(0.02 / math.sqrt(3))
    assert est.text() == "0.720 ± 0.020"
    single = estimate([0.5, None, float("nan")])
    assert single.n == 1 and math.isnan(single.std) and single.text() == "0.500"
    assert estimate([None]) is None


def test_noise_rule_calls_a_difference_only_outside_two_standard_errors():
    a = estimate([0.70, 0.72, 0.74])  # se = 0.01155
    close = estimate([0.74, 0.76, 0.78])  # 0.04 apart, threshold 2 * (se_a + se_b) = 0.0462
    far = estimate([0.76, 0.78, 0.80])  # 0.06 apart
    assert not differs(a, close) and compare(close, a) == "≈"
    assert differs(a, far) and compare(far, a) == ">" and compare(a, far) == "<"
    # One seed: no noise estimate, no difference called however large.
    assert not differs(estimate([0.1]), estimate([0.9]))
    assert not differs(a, None)


def test_pareto_front_on_a_hand_made_example():
    #        cost  accuracy
    points = [
        (1.0, 0.50),  # 0 front (cheapest)
        (2.0, 0.40),  # 1 dominated by 0
        (2.0, 0.70),  # 2 front
        (5.0, 0.70),  # 3 dominated by 2 (same accuracy, dearer)
        (8.0, 0.90),  # 4 front (most robust)
        (9.0, 0.85),  # 5 dominated by 4
        (1.0, 0.50),  # 6 equal to 0: neither dominates
    ]
    assert pareto_front(points) == [0, 6, 2, 4]
    assert pareto_front([]) == []


def test_aggregate_rows_groups_seeds_and_keeps_failures():
    rows = [_row("fgsm", s, 1.0 + s, 0.9 + 0.01 * s, 0.6 + 0.01 * s, 0.1) for s in range(3)]
    rows.append(_row("broken", 0, 1.0, 0.5, 0.5, 0.5, status="error"))
    aggs = aggregate_rows(rows, _meta())
    fgsm = aggs[0]
    assert fgsm.seeds == [0, 1, 2]
    assert fgsm.get("clean_accuracy").mean == pytest.approx(0.91)
    assert fgsm.get("robust_accuracy/2/1.5").std == pytest.approx(0.01)
    assert fgsm.get("seconds_per_epoch").mean == pytest.approx(2.0)
    assert aggs[1].seeds == [] and "ValueError: boom" in aggs[1].errors[0]


def test_headline_table_has_the_headline_columns_and_mean_std_cells():
    rows = [_row("fgsm", s, 1.0, 0.90 + 0.02 * s, 0.60, 0.10) for s in range(3)]
    rows += [_row("broken", 0, 1.0, 0.5, 0.5, 0.5, status="error")]
    text = headline_text(rows, _meta())
    header = text.splitlines()[0]
    for column in (
        "defence",
        "model",
        "s/epoch",
        "clean",
        "AA-fast l2 1.5",
        "AA-fast l∞ 0.3",
        "cert l2 0.3",
        "cert l∞ 0.1",
    ):
        assert column in header
    fgsm_line = next(line for line in text.splitlines() if line.startswith("fgsm"))
    assert "mnist_cnn" in fgsm_line and "0.920 ± 0.020" in fgsm_line and "0.600 ± 0.000" in fgsm_line
    assert "**error** (train): ValueError: boom" in text
    assert "APGD-CE + APGD-DLR" in text  # the attack is stated


def test_findings_call_domination_only_outside_the_noise():
    rows = []
    for s in range(3):
        rows.append(_row("fbf", s, 1.0, 0.97, 0.75 + 0.005 * s, 0.2))
        rows.append(_row("jr-l2-0.01", s, 1.5, 0.95, 0.59 + 0.005 * s, 0.0, trainer="jr", norm="2"))
        rows.append(_row("jr-noisy", s, 1.5, 0.95, [0.3, 0.9, 0.6][s], 0.0, trainer="jr", norm="2"))
    lines = findings(aggregate_rows(rows, _meta()), PROTOCOL.evaluation_config() | {"seeds": [0, 1, 2]})
    l2 = next(line for line in lines if line.startswith("- Best JR row at l2"))
    # The best JR row by mean is the noisy one (0.6); fbf's 0.755 is inside its noise: no domination called.
    assert "`jr-noisy`" in l2 and "not dominated" in l2
    rows = [r for r in rows if r["defence"] != "jr-noisy"]
    lines = findings(aggregate_rows(rows, _meta()), PROTOCOL.evaluation_config() | {"seeds": [0, 1, 2]})
    l2 = next(line for line in lines if line.startswith("- Best JR row at l2"))
    assert "dominated outside the noise by `fbf`" in l2
    front = next(line for line in lines if line.startswith("- **Pareto front, l2 1.5**"))
    assert "`fbf`" in front and "`jr-l2-0.01`" not in front


def test_standard_autoattack_gap_rule():
    gap, se, counts = standard_gap({"n": 500, "extra_broken": 2})
    assert gap == pytest.approx(0.004) and not counts  # 2 of 500 is within 2 SE
    gap, se, counts = standard_gap({"n": 500, "extra_broken": 20})
    assert gap == pytest.approx(0.04) and se == pytest.approx(math.sqrt(0.04 * 0.96 / 500)) and counts


def test_ibp_schedule_warms_up_clean_then_ramps_like_gowal():
    eps_schedule, weight_schedule = ibp_schedules(0.4, 10)
    eps = [eps_schedule.step() for _ in range(10)]
    weights = [weight_schedule.step() for _ in range(10)]
    assert eps[0] == 0.0 and weights[0] == 0.0  # first epoch clean (kappa = 1)
    assert eps[1] == pytest.approx(0.08) and eps[5] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4)
    assert all(b >= a for a, b in zip(eps, eps[1:]))
    assert weights[-1] == pytest.approx(FINAL_CERTIFIED_WEIGHT) == 0.5
    short_eps, _ = ibp_schedules(0.1, 3)
    assert [short_eps.step() for _ in range(3)] == pytest.approx([0.0, 0.05, 0.1])
    with pytest.raises(ValueError, match="ramp"):
        GowalRamp(0.0, 1.0, warmup=1, ramp=0)


def test_protocol_validates_seeds_and_model():
    assert Protocol(seeds=[2, 0]).seeds == (2, 0)
    for bad in ((), (0, 0), (-1,), (1.5,), "012"):
        with pytest.raises(ValueError, match="seeds"):
            Protocol(seeds=bad)
    with pytest.raises(ValueError, match="`model` must be one of mnist_cnn, mnist_maxpool_cnn"):
        Protocol(model="resnet")
    # The headline radii always join their sweeps; l-inf 0.3 is evaluated whatever the sweep.
    p = Protocol(eps_linf=(0.1,), eps_l2=(1.0,))
    assert 0.3 in p.eps_linf and 1.5 in p.eps_l2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--seeds", "0", "-1"], "seeds must be integers >= 0"),
        (["compare", "--seeds", "a"], "seeds must be integers >= 0"),
        (["compare", "--seeds"], "expected at least one argument"),
        (["compare", "--seed", "1", "--seeds", "2"], "not allowed with argument"),
        (["compare", "--model", "resnet"], "invalid choice"),
    ],
)
def test_cli_refuses_bad_seeds_and_models(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err


def test_cli_refuses_repeated_seeds(capsys):
    assert main(["compare", "--seeds", "0", "1", "0", "--quiet"]) == 2
    assert "--seeds: repeated seed" in capsys.readouterr().err


def test_label_boxes_overlap_test():
    assert overlaps((0, 0, 2, 2), (1, 1, 3, 3))
    assert not overlaps((0, 0, 1, 1), (1, 0, 2, 1))  # touching edges only


def test_labels_of_clustered_points_do_not_overlap():
    from art_jacreg.compare.plots import _pyplot, place_labels

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    points = [(1.0, 0.70), (1.05, 0.71), (1.1, 0.70), (1.0, 0.69), (3.0, 0.2), (1.02, 0.705)]
    ax.scatter(*zip(*points))
    ax.set_xlim(0.5, 4)
    ax.set_ylim(0, 1)
    anns = place_labels(ax, points, [str(i) for i in range(1, 7)])
    renderer = fig.canvas.get_renderer()
    boxes = [tuple(a.get_window_extent(renderer).extents) for a in anns]
    assert not any(overlaps(boxes[i], boxes[j]) for i in range(6) for j in range(i + 1, 6))
    plt.close(fig)


def test_recommendations_follow_their_stated_rules():
    from art_jacreg.compare.summary import recommendations

    rows = []
    for s in range(3):
        rows.append(_row("fbf", s, 1.0, 0.97, 0.70 + 0.001 * s, 0.2))
        rows.append(_row("madry", s, 7.0, 0.98, 0.80 + 0.001 * s, 0.3))
        jr = _row("jr-l2-0.01", s, 1.5, 0.95, 0.50, 0.0, trainer="jr", norm="2")
        jr["certified_accuracy"]["2"]["0.3"] = 0.4
        rows.append(jr)
    lines = recommendations(aggregate_rows(rows, _meta()), PROTOCOL.evaluation_config())
    text = "\n".join(lines)
    assert "**Most robust at l2 1.5:** `madry`" in text
    assert "**Cheapest robust at l2 1.5:** `fbf`" in text  # 0.701 >= 0.8 * 0.801; jr's 0.5 is not
    assert "**Certifiable at l2 0.3:** `jr-l2-0.01`" in text
