"""The promotion gate: a retrained model replaces the current one only if it is not worse.

Both models are judged as the edge runs them, from their TFLite files through
``models.convert.evaluate_tflite``, on the same held-out faces.  The rule:

* a set with at least ``minimum_samples`` faces *decides*: the candidate is
  refused if its top-1 is below the current model's by more than ``margin``
  (absolute) on ANY deciding set;
* a smaller set is evaluated and reported, but one face there is several
  points of accuracy, so it cannot block (the reasons say so);
* an empty set is reported as such;
* with no deciding set at all the candidate is refused: there is no evidence
  that it is not worse.

``decide`` holds the rule alone (no models), so it is cheap to test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.emotions import NUM_EMOTIONS
from models.convert import evaluate_tflite
from runtime.registry import sha256_file
from models.training import (
    MIN_VALIDATION_SAMPLES,
    LabelledFaces,
    check_labelled_faces,
    model_inputs,
)

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.01
MINIMUM_SAMPLES = MIN_VALIDATION_SAMPLES

Scores = dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and everything it was based on."""

    promote: bool
    scores: Scores  # {set: {"candidate": top1, "current": top1}}; None for an empty set
    reasons: list[str]  # one line per set, then the verdict
    confusion: dict[str, list[list[int]]]  # candidate's 7x7 counts per set, rows true, columns predicted
    counts: dict[str, int]  # faces per set
    margin: float
    minimum_samples: int
    candidate_sha256: str
    current_sha256: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (for the model card and the job's logs)."""
        return {
            "promote": self.promote,
            "margin": self.margin,
            "minimum_samples": self.minimum_samples,
            "scores": self.scores,
            "counts": self.counts,
            "reasons": list(self.reasons),
            "candidate_sha256": self.candidate_sha256,
            "current_sha256": self.current_sha256,
        }


def gate(
    candidate_tflite: Path,
    current_tflite: Path,
    evaluation_sets: Mapping[str, LabelledFaces],
    margin: float = DEFAULT_MARGIN,
    minimum_samples: int = MINIMUM_SAMPLES,
    num_threads: int | None = None,
) -> GateDecision:
    """Decide whether the candidate model may replace the current one.

    # Arguments
        candidate_tflite: The retrained model's float32 TFLite file.
        current_tflite: The TFLite file of the model the edges run now.
        evaluation_sets: Held-out ``(faces, labels)`` per name: uint8 grey
            faces (N, H, W) (resized and normalised like on the edge) or
            normalised float32 (N, 64, 64, 1), labels in ``EMOTIONS`` order.
            Never faces the candidate was trained on.
        margin: How much lower (absolute top-1, e.g. 0.01 = one point) the
            candidate may score than the current model on a deciding set.
        minimum_samples: Sets with fewer faces are reported but do not decide.
        num_threads: LiteRT threads (default: all cores).

    # Returns
        A ``GateDecision``: ``promote``, the per-set ``scores`` of both models,
        human-readable ``reasons``, the candidate's confusion matrices, the
        set sizes and the sha256 of both files.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scores: Scores = {}
    confusion: dict[str, list[list[int]]] = {}
    counts: dict[str, int] = {}
    for name, (faces, labels) in evaluation_sets.items():
        check_labelled_faces(f"evaluation set {name!r}", faces, labels)
        labels = np.asarray(labels, dtype=np.int64)
        counts[name] = len(labels)
        if len(labels) == 0:
            scores[name] = {"candidate": None, "current": None}
            confusion[name] = confusion_matrix(labels, labels).tolist()
            continue
        inputs = model_inputs(faces)
        candidate = evaluate_tflite(Path(candidate_tflite), inputs, labels, num_threads=num_threads)
        current = evaluate_tflite(Path(current_tflite), inputs, labels, num_threads=num_threads)
        scores[name] = {"candidate": candidate.top1, "current": current.top1}
        confusion[name] = confusion_matrix(labels, candidate.predicted_classes).tolist()

    promote, reasons = decide(scores, counts, margin, minimum_samples)
    for reason in reasons:
        logger.info("gate: %s", reason)
    return GateDecision(
        promote=promote,
        scores=scores,
        reasons=reasons,
        confusion=confusion,
        counts=counts,
        margin=margin,
        minimum_samples=minimum_samples,
        candidate_sha256=sha256_file(candidate_tflite),
        current_sha256=sha256_file(current_tflite),
    )


def decide(scores: Scores, counts: Mapping[str, int], margin: float, minimum_samples: int) -> tuple[bool, list[str]]:
    """The gate's rule on already-computed scores: (promote, reasons).  See the module docstring."""
    reasons: list[str] = []
    deciding: list[str] = []
    blocking: list[str] = []
    for name, pair in scores.items():
        count = counts[name]
        if count == 0 or pair["candidate"] is None or pair["current"] is None:
            reasons.append(f"{name}: empty (0 faces), nothing to compare; does not decide")
            continue
        difference = pair["candidate"] - pair["current"]
        comparison = (
            f"{name} ({count} faces): candidate {pair['candidate']:.4f} vs current {pair['current']:.4f} "
            f"({difference:+.4f})"
        )
        if count < minimum_samples:
            reasons.append(f"{comparison}; fewer than {minimum_samples} faces, reported but does not decide")
            continue
        deciding.append(name)
        if difference < -margin:
            blocking.append(name)
            reasons.append(f"{comparison}; worse by more than the {margin:.4f} margin: blocks promotion")
        else:
            reasons.append(f"{comparison}; within the {margin:.4f} margin")
    promote = bool(deciding) and not blocking
    reasons.append(_verdict(promote, deciding, blocking, margin, minimum_samples))
    return promote, reasons


def _verdict(promote: bool, deciding: list[str], blocking: list[str], margin: float, minimum_samples: int) -> str:
    if not deciding:
        return (
            f"refused: no evaluation set has at least {minimum_samples} faces, "
            "so nothing shows the candidate is not worse"
        )
    if blocking:
        worse_on = ", ".join(blocking)
        return f"refused: the candidate is worse than the current model by more than {margin:.4f} on {worse_on}"
    return f"promoted: the candidate is within {margin:.4f} of the current model or better on {', '.join(deciding)}"


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int = NUM_EMOTIONS) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class, ``EMOTIONS`` order."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


__all__ = ["DEFAULT_MARGIN", "MINIMUM_SAMPLES", "GateDecision", "confusion_matrix", "decide", "gate"]
