"""Weight-space interpolation between the starting model and the fine-tuned one (WiSE-FT).

Fine-tuning on a new camera's faces gains there and forgets some of FER2013. Wortsman et al.
("Robust fine-tuning of zero-shot models", CVPR 2022) showed that the straight line between the two
sets of weights, ``(1 - a) * start + a * tuned``, keeps most of the gain for a fraction of the loss;
the two models share one initialisation, so the midway weights are a working model, not noise.
Batch-norm statistics are blended like every other weight.

:func:`choose_blend` picks ``a`` on the *selection* sets only (the ones early stopping watches;
never a gate face): among the blends whose reference (FER2013) selection accuracy is at most
``tolerance`` below the starting model's, the one best on the new faces' selection set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from models.training.callbacks import loss_and_accuracy
from models.training.data import LabelledFaces

DEFAULT_BLENDS = tuple(round(0.1 * step, 1) for step in range(11))


@dataclass(frozen=True)
class BlendScore:
    blend: float  # 0: the starting model, 1: the fine-tuned one
    scores: dict[str, tuple[float, float]]  # selection set -> (loss, accuracy)


@dataclass(frozen=True)
class BlendChoice:
    blend: float
    reason: str
    table: tuple[BlendScore, ...]

    def summary(self) -> dict:
        """JSON-ready, for the model card."""
        return {
            "blend": self.blend, "reason": self.reason,
            "table": [{"blend": row.blend, **{f"{name}_{what}": round(value, 4) for name, (loss, accuracy) in row.scores.items()
                                               for what, value in (("loss", loss), ("accuracy", accuracy))}} for row in self.table],
        }


def blend_weights(start: keras.Model, tuned: keras.Model, blend: float, into: keras.Model) -> None:
    """Set ``into``'s weights to ``(1 - blend) * start + blend * tuned``, layer by layer by name."""
    for layer in into.layers:
        if not layer.weights:
            continue
        first = start.get_layer(layer.name).get_weights()
        second = tuned.get_layer(layer.name).get_weights()
        layer.set_weights([(1.0 - blend) * a + blend * b for a, b in zip(first, second)])


def score_blends(start: keras.Model, tuned: keras.Model, selection: Mapping[str, LabelledFaces],
                 blends: Sequence[float] = DEFAULT_BLENDS) -> list[BlendScore]:
    """Loss and accuracy of each blend on each selection set (model inputs and int64 labels)."""
    probe = keras.models.clone_model(tuned)
    rows = []
    for blend in blends:
        blend_weights(start, tuned, blend, probe)
        rows.append(BlendScore(float(blend), {name: loss_and_accuracy(probe, x, y) for name, (x, y) in selection.items() if len(y)}))
    return rows


def pick_blend(rows: Sequence[BlendScore], target: str, reference: str | None, tolerance: float) -> tuple[float, str]:
    """The blend best on ``target`` (accuracy, then loss; then the larger blend) that keeps ``reference``.

    "Keeps": the reference set's accuracy at most ``tolerance`` below the starting model's (blend 0).
    Without a reference set the fine-tuned model (the largest blend) is kept as it is.
    """
    by_blend = sorted(rows, key=lambda row: row.blend)
    if by_blend[0].blend != 0:
        raise ValueError("pick_blend needs the starting model's scores (blend 0)")
    if reference is None or reference not in by_blend[0].scores:
        return by_blend[-1].blend, "no reference selection set: the fine-tuned weights as they are"
    floor = by_blend[0].scores[reference][1] - tolerance
    kept = [row for row in by_blend if row.scores[reference][1] >= floor - 1e-12]
    if target not in by_blend[0].scores:
        best = kept[-1]
        return best.blend, f"no {target} selection set: the largest blend that keeps {reference} accuracy >= {floor:.4f}"
    best = max(kept, key=lambda row: (row.scores[target][1], -row.scores[target][0], row.blend))
    loss, accuracy = best.scores[target]
    return best.blend, (f"best {target} selection accuracy {accuracy:.4f} (loss {loss:.4f}) among the blends keeping "
                        f"{reference} selection accuracy >= {floor:.4f} (start {by_blend[0].scores[reference][1]:.4f} - {tolerance})")


def choose_blend(start: keras.Model, tuned: keras.Model, selection: Mapping[str, LabelledFaces], target: str,
                 reference: str | None, tolerance: float, blends: Sequence[float] = DEFAULT_BLENDS) -> tuple[keras.Model, BlendChoice]:
    """The chosen blend as a new model (``tuned`` is left as it is) and how it was chosen.

    One blend given: that one, scored for the record; several: :func:`pick_blend` over them and 0.
    """
    if len(blends) == 1:
        rows = score_blends(start, tuned, selection, blends)
        blend, reason = float(blends[0]), "a fixed blend"
    else:
        rows = score_blends(start, tuned, selection, sorted({0.0, *map(float, blends)}))
        blend, reason = pick_blend(rows, target, reference, tolerance)
    model = keras.models.clone_model(tuned)
    blend_weights(start, tuned, blend, model)
    return model, BlendChoice(blend, reason, tuple(rows))

