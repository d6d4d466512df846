"""The promotion gate: a retrained model replaces the current one only if it is shown to be better.

Both models are judged as the edge runs them, from their TFLite files, on the
same gate faces: faces that neither training nor early stopping ever saw
(:mod:`models.dataset` keeps the three sets disjoint).  Each face is a pair of
answers, so the comparison is paired (:mod:`models.paired`).  The rule:

1. **Better on the deployment faces** (the collected, human-labelled faces held
   out for the gate): more faces only the candidate gets right than only the
   current model gets right (c > b), and McNemar's two-sided mid-p value below
   ``alpha`` (0.05).  A tie, or a win that may be chance, is not a promotion.
2. **Not worse on every reference set** (FER2013's gate faces): the lower bound
   of Newcombe's 95 % interval for the paired difference (candidate - current)
   above ``-noninferiority_margin`` (0.005, half a point).
3. **Undecided** when there are fewer than ``min_deployment_faces`` deployment
   faces, or no reference faces: nothing then shows the candidate is better
   and not worse, so it is not promoted, and the job says what is missing.

``decide`` holds the rule alone, on already-counted tables, so it is cheap to
test; ``gate`` runs both models.  This module imports no TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from contract.emotions import NUM_EMOTIONS
from models.paired import PairedCounts, mcnemar_exact_p, mcnemar_mid_p, newcombe_interval
from runtime.registry import sha256_file

logger = logging.getLogger(__name__)

LabelledFaces = tuple[np.ndarray, np.ndarray]
Outcome = Literal["promoted", "refused", "undecided"]
Role = Literal["deployment", "reference"]

DEPLOYMENT_SET = "collected"
MCNEMAR_TEST = "McNemar exact conditional test, two-sided mid-p (Fagerland et al. 2013)"
INTERVAL_METHOD = "Newcombe (1998) square-and-add Wilson score interval for the paired difference"


@dataclass(frozen=True)
class GateRule:
    """The thresholds of the rule (``RetrainConfig.gate`` fills it)."""

    alpha: float = 0.05  # the deployment win must have a mid-p value below this
    noninferiority_margin: float = 0.005  # a reference set's lower bound must be above minus this
    confidence: float = 0.95  # of the Newcombe intervals
    min_deployment_faces: int = 50  # fewer labelled deployment faces: undecided

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 <= self.noninferiority_margin < 1:
            raise ValueError(f"noninferiority_margin must be in [0, 1), got {self.noninferiority_margin}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.min_deployment_faces < 1:
            raise ValueError(f"min_deployment_faces must be at least 1, got {self.min_deployment_faces}")


@dataclass(frozen=True)
class SetComparison:
    """Both models on one gate set: the paired table, the statistics and what they mean for the rule."""

    name: str
    role: Role
    faces: int
    counts: PairedCounts | None  # None for an empty set
    mid_p: float | None  # McNemar two-sided mid-p
    exact_p: float | None  # McNemar two-sided exact conditional p
    interval: tuple[float, float] | None  # Newcombe interval of candidate - current
    passed: bool  # this set's part of the rule holds
    decides: bool  # the set had enough faces to take part in the decision
    reason: str

    @property
    def candidate_top1(self) -> float | None:
        return self.counts.candidate_accuracy if self.counts else None

    @property
    def current_top1(self) -> float | None:
        return self.counts.current_accuracy if self.counts else None

    @property
    def difference(self) -> float | None:
        return self.counts.difference if self.counts else None

    def to_json(self) -> dict[str, object]:
        counts = self.counts
        return {
            "role": self.role,
            "faces": self.faces,
            "candidate_top1": self.candidate_top1,
            "current_top1": self.current_top1,
            "difference": self.difference,
            # b and c as in McNemar's test: the discordant faces.
            "b_current_only_right": counts.current_only if counts else 0,
            "c_candidate_only_right": counts.candidate_only if counts else 0,
            "both_right": counts.both_right if counts else 0,
            "both_wrong": counts.both_wrong if counts else 0,
            "mcnemar_mid_p": self.mid_p,
            "mcnemar_exact_p": self.exact_p,
            "interval": list(self.interval) if self.interval else None,
            "passed": self.passed,
            "decides": self.decides,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and everything it was based on."""

    outcome: Outcome
    comparisons: dict[str, SetComparison]  # the deployment set first, then the reference sets
    reasons: list[str]  # one line per set, then the verdict
    rule: GateRule
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # candidate's 7x7 per set, rows true
    candidate_sha256: str = ""
    current_sha256: str = ""

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"

    @property
    def scores(self) -> dict[str, dict[str, float | None]]:
        """{set: {"candidate": top1, "current": top1}}; None for an empty set."""
        return {name: {"candidate": item.candidate_top1, "current": item.current_top1} for name, item in self.comparisons.items()}

    @property
    def counts(self) -> dict[str, int]:
        """Faces per gate set."""
        return {name: item.faces for name, item in self.comparisons.items()}

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (for the model card and the job's logs)."""
        return {
            "outcome": self.outcome,
            "promote": self.promote,
            "rule": asdict(self.rule),
            "tests": {"deployment": MCNEMAR_TEST, "interval": INTERVAL_METHOD},
            "sets": {name: item.to_json() for name, item in self.comparisons.items()},
            "reasons": list(self.reasons),
            "candidate_sha256": self.candidate_sha256,
            "current_sha256": self.current_sha256,
        }


# -- the rule ----------------------------------------------------------------------------------


def compare_deployment(name: str, counts: PairedCounts | None, rule: GateRule) -> SetComparison:
    """Is the candidate significantly better on the deployment faces?"""
    faces = counts.total if counts else 0
    if counts is None or faces == 0:
        return SetComparison(name, "deployment", 0, None, None, None, None, False, False,
                             f"{name}: no labelled deployment faces held out for the gate")
    mid_p, exact_p = mcnemar_mid_p(counts), mcnemar_exact_p(counts)
    interval = newcombe_interval(counts, rule.confidence)
    summary = _summary(name, counts, interval, rule.confidence) + f", mid-p {mid_p:.4g}"
    if faces < rule.min_deployment_faces:
        return SetComparison(name, "deployment", faces, counts, mid_p, exact_p, interval, False, False,
                             f"{summary}; fewer than {rule.min_deployment_faces} faces: too few to decide")
    better = counts.candidate_only > counts.current_only and mid_p < rule.alpha
    if better:
        verdict = f"significantly better (mid-p < {rule.alpha:g})"
    elif counts.candidate_only > counts.current_only:
        verdict = f"ahead, but not significantly (mid-p >= {rule.alpha:g}): not shown to be better"
    elif counts.candidate_only == counts.current_only:
        verdict = "a tie: not better"
    else:
        verdict = "worse"
    return SetComparison(name, "deployment", faces, counts, mid_p, exact_p, interval, better, True, f"{summary}; {verdict}")


def compare_reference(name: str, counts: PairedCounts | None, rule: GateRule) -> SetComparison:
    """Is the candidate not worse than the margin on a reference set (FER2013)?"""
    if counts is None or counts.total == 0:
        return SetComparison(name, "reference", 0, None, None, None, None, False, False,
                             f"{name}: no faces held out for the gate, so nothing shows the candidate is not worse")
    mid_p, exact_p = mcnemar_mid_p(counts), mcnemar_exact_p(counts)
    interval = newcombe_interval(counts, rule.confidence)
    summary = _summary(name, counts, interval, rule.confidence)
    not_worse = interval[0] > -rule.noninferiority_margin
    comparison = ">" if not_worse else "<="
    verdict = "not worse" if not_worse else "may be worse"
    reason = f"{summary}; lower bound {comparison} -{rule.noninferiority_margin:g}: {verdict}"
    return SetComparison(name, "reference", counts.total, counts, mid_p, exact_p, interval, not_worse, True, reason)


def decide(deployment: PairedCounts | None, references: Mapping[str, PairedCounts | None], rule: GateRule = GateRule(),
           deployment_name: str = DEPLOYMENT_SET) -> GateDecision:
    """The rule on already-counted tables (see the module docstring); no models, no files."""
    comparisons = {deployment_name: compare_deployment(deployment_name, deployment, rule)}
    comparisons.update({name: compare_reference(name, counts, rule) for name, counts in references.items()})
    outcome, verdict = _verdict(comparisons, rule)
    reasons = [item.reason for item in comparisons.values()] + [verdict]
    return GateDecision(outcome=outcome, comparisons=comparisons, reasons=reasons, rule=rule)


def _verdict(comparisons: Mapping[str, SetComparison], rule: GateRule) -> tuple[Outcome, str]:
    deployment = next(item for item in comparisons.values() if item.role == "deployment")
    references = [item for item in comparisons.values() if item.role == "reference"]
    if not deployment.decides:
        return "undecided", (
            f"undecided: {deployment.faces} labelled deployment faces in the gate set, at least "
            f"{rule.min_deployment_faces} are needed to decide: label more faces (or import some)"
        )
    missing = [item.name for item in references if not item.decides]
    if not references or missing:
        what = ", ".join(missing) if missing else "no reference set was given"
        return "undecided", f"undecided: no reference faces to show the candidate is not worse ({what}): give dataset.base_npz"
    if not deployment.passed:
        return "refused", f"refused: the candidate is not shown to be better than the current model on {deployment.name}"
    worse = [item.name for item in references if not item.passed]
    if worse:
        return "refused", (
            f"refused: the candidate may be worse than the current model by more than "
            f"{rule.noninferiority_margin:g} on {', '.join(worse)}"
        )
    names = ", ".join(item.name for item in references)
    return "promoted", f"promoted: significantly better on {deployment.name} and not worse on {names}"


def _summary(name: str, counts: PairedCounts, interval: tuple[float, float], confidence: float) -> str:
    return (
        f"{name} ({counts.total} faces): candidate {counts.candidate_accuracy:.4f} vs current "
        f"{counts.current_accuracy:.4f} ({counts.difference:+.4f}; b={counts.current_only} only current right, "
        f"c={counts.candidate_only} only candidate right; {confidence:.0%} interval "
        f"{interval[0]:+.4f} to {interval[1]:+.4f})"
    )


# -- running both models ---------------------------------------------------------------------


def gate(
    candidate_tflite: Path,
    current_tflite: Path,
    deployment: LabelledFaces,
    references: Mapping[str, LabelledFaces],
    rule: GateRule = GateRule(),
    num_threads: int | None = None,
) -> GateDecision:
    """Decide whether the candidate model may replace the current one.

    # Arguments
        candidate_tflite: The retrained model's float32 TFLite file.
        current_tflite: The TFLite file of the model the edges run now.
        deployment: The collected, human-labelled gate faces ``(faces, labels)``:
            uint8 grey (N, H, W) or normalised float32 (N, 64, 64, 1), labels in
            ``EMOTIONS`` order.  Never seen in training or early stopping.
        references: Reference gate sets by name (``{"fer2013": (faces, labels)}``),
            disjoint from training and selection likewise.
        rule: The thresholds (``GateRule``).
        num_threads: LiteRT threads (default: all cores).

    # Returns
        A ``GateDecision``: the outcome ("promoted", "refused" or "undecided"),
        one ``SetComparison`` per set (the 2x2 counts, mid-p, interval), the
        reasons, the candidate's confusion matrices and both files' sha256.
    """
    sets = {DEPLOYMENT_SET: deployment, **references}
    tables: dict[str, PairedCounts | None] = {}
    confusion: dict[str, list[list[int]]] = {}
    for name, (faces, labels) in sets.items():
        tables[name], confusion[name] = _paired_table(name, Path(candidate_tflite), Path(current_tflite), faces, labels, num_threads)
    decision = decide(tables[DEPLOYMENT_SET], {name: tables[name] for name in references}, rule)
    for reason in decision.reasons:
        logger.info("gate: %s", reason)
    return GateDecision(
        outcome=decision.outcome, comparisons=decision.comparisons, reasons=decision.reasons, rule=rule,
        confusion=confusion, candidate_sha256=sha256_file(candidate_tflite), current_sha256=sha256_file(current_tflite),
    )


def _paired_table(name: str, candidate_tflite: Path, current_tflite: Path, faces: np.ndarray, labels: np.ndarray,
                  num_threads: int | None) -> tuple[PairedCounts | None, list[list[int]]]:
    """The 2x2 table of both models on one set, and the candidate's confusion matrix."""
    from models.convert import evaluate_tflite  # TensorFlow: only when models run
    from models.training import check_labelled_faces, model_inputs

    check_labelled_faces(f"gate set {name!r}", faces, labels)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return None, confusion_matrix(labels, labels).tolist()
    inputs = model_inputs(faces)
    candidate = evaluate_tflite(candidate_tflite, inputs, labels, num_threads=num_threads).predicted_classes
    current = evaluate_tflite(current_tflite, inputs, labels, num_threads=num_threads).predicted_classes
    return PairedCounts.of(labels, candidate, current), confusion_matrix(labels, candidate).tolist()


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int = NUM_EMOTIONS) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class, ``EMOTIONS`` order."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


__all__ = [
    "DEPLOYMENT_SET", "GateDecision", "GateRule", "SetComparison", "compare_deployment", "compare_reference",
    "confusion_matrix", "decide", "gate",
]
