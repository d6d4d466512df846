"""The promotion gate's statistics and rule on constructed tables: no models, no TensorFlow, fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from models.gate import GateRule, decide
from models.paired import PairedCounts, mcnemar_exact_p, mcnemar_mid_p, newcombe_interval

RULE = GateRule(alpha=0.05, noninferiority_margin=0.005, min_deployment_faces=50)
# FER2013's gate faces when the candidate changed almost nothing: 3,589 faces, 20 against, 25 for.
FER_UNCHANGED = PairedCounts(both_right=2300, current_only=20, candidate_only=25, both_wrong=1244)


def table(right_both: int, only_current: int, only_candidate: int, wrong_both: int) -> PairedCounts:
    return PairedCounts(right_both, only_current, only_candidate, wrong_both)


# -- the statistics, against published values --------------------------------------------------


def test_mcnemar_and_newcombe_match_published_values():
    """Cavo et al. (2012) as worked in Fagerland, Lydersen and Laake, "Statistical Analysis of Contingency
    Tables" (2017), ch. 8: b=16, c=6 of 161 pairs."""
    cavo = table(59, 16, 6, 80)

    assert mcnemar_exact_p(cavo) == pytest.approx(0.052479, abs=5e-7)
    assert mcnemar_mid_p(cavo) == pytest.approx(0.034690, abs=5e-7)
    assert cavo.difference == pytest.approx(-0.0621, abs=5e-5)
    low, high = newcombe_interval(cavo)
    assert low == pytest.approx(-0.1186, abs=5e-5) and high == pytest.approx(-0.0046, abs=5e-5)


def test_the_tests_are_symmetric_and_ties_are_never_significant():
    forward, backward = table(50, 3, 12, 35), table(50, 12, 3, 35)
    assert mcnemar_mid_p(forward) == pytest.approx(mcnemar_mid_p(backward))
    low, high = newcombe_interval(forward)
    assert newcombe_interval(backward) == pytest.approx((-high, -low))
    assert mcnemar_mid_p(table(40, 10, 10, 40)) > 0.5
    assert mcnemar_mid_p(table(100, 0, 0, 0)) == 1.0


def test_large_tables_do_not_underflow():
    many = table(20_000, 2_000, 2_200, 5_000)
    assert 0 < mcnemar_mid_p(many) < 0.01


def test_paired_counts_from_predictions():
    labels = np.array([0, 1, 2, 3, 4, 5])
    counts = PairedCounts.of(labels, candidate=np.array([0, 1, 2, 0, 0, 5]), current=np.array([0, 1, 0, 3, 0, 0]))
    assert counts == table(2, 1, 2, 1)
    assert counts.candidate_accuracy == pytest.approx(4 / 6) and counts.current_accuracy == pytest.approx(3 / 6)


# -- the rule ----------------------------------------------------------------------------------


def test_a_clear_win_that_is_not_worse_on_fer2013_is_promoted():
    decision = decide(table(60, 2, 20, 18), {"fer2013": FER_UNCHANGED}, RULE)

    assert decision.outcome == "promoted" and decision.promote
    collected = decision.comparisons["collected"]
    assert collected.passed and collected.mid_p < 0.001 and collected.interval[0] > 0
    assert decision.comparisons["fer2013"].interval[0] > -0.005
    assert decision.reasons[-1].startswith("promoted")


def test_a_tie_is_not_a_promotion():
    decision = decide(table(60, 10, 10, 20), {"fer2013": FER_UNCHANGED}, RULE)

    assert decision.outcome == "refused"
    assert "a tie" in decision.comparisons["collected"].reason


def test_a_win_that_may_be_chance_is_refused():
    decision = decide(table(60, 5, 10, 25), {"fer2013": FER_UNCHANGED}, RULE)

    assert decision.outcome == "refused"
    assert decision.comparisons["collected"].mid_p > 0.05
    assert "not significantly" in decision.comparisons["collected"].reason


def test_a_small_loss_is_refused():
    decision = decide(table(60, 8, 5, 27), {"fer2013": FER_UNCHANGED}, RULE)

    assert decision.outcome == "refused" and "worse" in decision.comparisons["collected"].reason


def test_too_few_labelled_gate_faces_is_undecided():
    # Even a perfect sweep of 30 faces does not decide below min_deployment_faces.
    decision = decide(table(0, 0, 30, 0), {"fer2013": FER_UNCHANGED}, RULE)

    assert decision.outcome == "undecided" and not decision.promote
    assert "30 labelled deployment faces" in decision.reasons[-1] and "at least 50" in decision.reasons[-1]
    assert decide(None, {"fer2013": FER_UNCHANGED}, RULE).outcome == "undecided"


def test_without_fer2013_gate_faces_it_is_undecided():
    assert decide(table(60, 2, 20, 18), {}, RULE).outcome == "undecided"
    assert decide(table(60, 2, 20, 18), {"fer2013": None}, RULE).outcome == "undecided"


def test_failing_non_inferiority_on_fer2013_refuses_a_clear_win():
    # 1.2 points worse on 3,589 FER2013 faces: clearly beyond the half-point margin.
    worse = table(2200, 85, 42, 1262)
    decision = decide(table(60, 2, 20, 18), {"fer2013": worse}, RULE)

    assert decision.outcome == "refused"
    assert not decision.comparisons["fer2013"].passed and decision.comparisons["fer2013"].interval[0] < -0.005
    assert "fer2013" in decision.reasons[-1]


def test_non_inferiority_needs_enough_faces_to_show_it():
    # No change at all, but on 100 faces the interval is too wide to exclude a half-point loss.
    decision = decide(table(60, 2, 20, 18), {"fer2013": table(65, 1, 1, 33)}, RULE)

    assert decision.outcome == "refused" and decision.comparisons["fer2013"].interval[0] < -0.005


def test_the_decision_serialises_with_counts_p_values_and_intervals():
    decision = decide(table(60, 2, 20, 18), {"fer2013": FER_UNCHANGED}, RULE)

    document = json.loads(json.dumps(decision.to_json(), allow_nan=False))

    assert document["outcome"] == "promoted" and document["rule"]["noninferiority_margin"] == 0.005
    collected = document["sets"]["collected"]
    assert collected["b_current_only_right"] == 2 and collected["c_candidate_only_right"] == 20
    assert collected["mcnemar_mid_p"] < 0.001 and len(collected["interval"]) == 2
    assert "McNemar" in document["tests"]["deployment"] and "Newcombe" in document["tests"]["interval"]


def test_the_rule_and_the_split_import_no_tensorflow():
    probe = "import sys, models.gate, models.dataset, models.retrain; print('tensorflow' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stdout + run.stderr
