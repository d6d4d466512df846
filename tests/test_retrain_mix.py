"""emq-retrain's training mix: collected faces repeated against the base set's, the base faces marked for distillation."""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import BaseSplit, CollectedDataset, LabelledPart
from models.retrain import NotEnoughData, RetrainConfig, collected_repeats, training_data


def part(count: int, label: int = 0) -> LabelledPart:
    return LabelledPart(np.full((count, 64, 64), label, np.uint8), np.full(count, label, np.int64), list(range(count)))


def base(train: int, selection: int = 30) -> BaseSplit:
    faces = lambda count, label: (np.full((count, 64, 64), 200, np.uint8), np.full(count, label, np.int64))  # noqa: E731
    return BaseSplit(faces(train, 3), faces(selection, 4), faces(10, 5), np.arange(train), np.arange(selection), np.arange(10))


@pytest.mark.parametrize(("collected", "base_count", "share", "repeats"),
                         [(315, 5000, 0.25, 6), (315, 5000, 0.0, 1), (2000, 1000, 0.3, 1), (100, 100, 0.5, 1), (0, 5000, 0.25, 1),
                          (100, 0, 0.25, 1), (99, 100, 0.5, 2)])
def test_repeats_reach_the_share_with_the_fewest_whole_copies(collected, base_count, share, repeats):
    assert collected_repeats(collected, base_count, share) == repeats
    if collected and base_count and repeats > 1:
        assert repeats * collected / (repeats * collected + base_count) >= share
        assert (repeats - 1) * collected / ((repeats - 1) * collected + base_count) < share


def test_the_mix_repeats_collected_faces_and_marks_only_base_faces_for_distillation():
    collected = CollectedDataset(part(40, 1), part(25, 2), part(50, 6))
    data = training_data(collected, base(400), collected_min_share=0.25)
    assert len(data.y_train) == 4 * 40 + 400 and np.sum(data.y_train == 1) == 160  # 4 copies: 160 / 560 >= 25 % > 120 / 520
    assert data.distill is not None and data.distill.sum() == 400 and np.all(data.y_train[data.distill] == 3)
    assert list(data.validation) == ["collected", "fer2013"]
    plain = training_data(collected, base(400))
    assert len(plain.y_train) == 440 and plain.distill.sum() == 400
    alone = training_data(collected, None, collected_min_share=0.25)  # no base set: nothing to repeat against, nothing to distil
    assert len(alone.y_train) == 40 and not alone.distill.any()
    with pytest.raises(NotEnoughData):
        training_data(CollectedDataset(part(40, 1), part(0), part(50)), None)


def test_the_recipe_settings_are_in_the_config():
    config = RetrainConfig(release=False)
    assert 0 <= config.dataset.collected_min_share < 1 and 0 <= config.training.distillation < 1
    assert config.training.early_stopping_on in ("first", "mean")
    with pytest.raises(ValueError):
        RetrainConfig(release=False, training={"distillation": 1.0})


def test_the_weight_blend_is_a_share_or_auto():
    assert RetrainConfig(release=False).training.blend == 0.5
    assert RetrainConfig(release=False, training={"blend": "auto"}).training.blend == "auto"
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(ValueError):
            RetrainConfig(release=False, training={"blend": bad})
