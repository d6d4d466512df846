"""Weight blending (WiSE-FT): the arithmetic, the choice on the selection sets, and keep_last runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training needs the 'train' extra (tensorflow-cpu, keras)")

from models.training import TrainingSettings, train  # noqa: E402
from models.training.interpolation import BlendScore, blend_weights, choose_blend, pick_blend  # noqa: E402
from tests.test_model_training import fer2013, pretrained_keras  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def row(blend: float, collected: tuple[float, float], fer2013: tuple[float, float]) -> BlendScore:
    return BlendScore(blend, {"collected": collected, "fer2013": fer2013})


def test_the_best_blend_on_the_new_faces_that_keeps_the_reference_is_picked() -> None:
    rows = [row(0.0, (1.2, 0.50), (0.9, 0.660)), row(0.5, (1.0, 0.58), (0.9, 0.659)), row(1.0, (0.9, 0.62), (1.0, 0.640))]
    blend, reason = pick_blend(rows, "collected", "fer2013", tolerance=0.0025)
    assert blend == 0.5 and "0.58" in reason  # 1.0 is better on collected but loses 2 points of FER2013
    assert pick_blend(rows, "collected", "fer2013", tolerance=0.05)[0] == 1.0  # a looser tolerance keeps it
    assert pick_blend(rows, "collected", None, tolerance=0.0)[0] == 1.0  # no reference: the tuned model as it is


def test_ties_on_accuracy_go_to_the_lower_loss_then_the_larger_blend() -> None:
    rows = [row(0.0, (1.2, 0.5), (0.9, 0.66)), row(0.3, (1.0, 0.6), (0.9, 0.66)), row(0.6, (1.1, 0.6), (0.9, 0.66)),
            row(0.9, (1.0, 0.6), (0.9, 0.66))]
    assert pick_blend(rows, "collected", "fer2013", tolerance=0.0)[0] == 0.9
    # Every blend loses the reference: only the starting model (0) is left, which the gate then calls a tie.
    losing = [row(0.0, (1.2, 0.5), (0.9, 0.66)), row(1.0, (0.8, 0.7), (1.0, 0.60))]
    assert pick_blend(losing, "collected", "fer2013", tolerance=0.01)[0] == 0.0


def test_blended_weights_are_the_weighted_mean_of_both_models_batch_norm_included(pretrained_keras) -> None:  # noqa: F811
    import keras

    start = keras.models.load_model(pretrained_keras, compile=False)
    tuned = keras.models.clone_model(start)
    tuned.set_weights([weights + 1.0 for weights in start.get_weights()])
    into = keras.models.clone_model(start)
    blend_weights(start, tuned, 0.3, into)
    for mine, theirs in zip(into.get_weights(), start.get_weights()):
        np.testing.assert_allclose(mine, theirs + 0.3, rtol=0, atol=1e-5)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in into.layers)


def test_choose_blend_scores_every_blend_and_returns_the_chosen_weights(fer2013, pretrained_keras) -> None:  # noqa: F811
    import keras

    from models.training import validation_inputs

    start = keras.models.load_model(pretrained_keras, compile=False)
    run = train(fer2013, settings=TrainingSettings(epochs=1, learning_rate=1e-3, time_budget_s=600), start_from=pretrained_keras,
                progress=None)
    model, choice = choose_blend(start, run.model, validation_inputs(fer2013.validation), "collected", "fer2013", 0.01,
                                 blends=(0.0, 0.5, 1.0))
    assert [score.blend for score in choice.table] == [0.0, 0.5, 1.0]
    assert choice.blend in (0.0, 0.5, 1.0) and choice.summary()["table"][0]["fer2013_accuracy"] >= 0
    expected = keras.models.clone_model(start)
    blend_weights(start, run.model, choice.blend, expected)
    for mine, theirs in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert not np.array_equal(run.model.get_weights()[0], start.get_weights()[0])  # the tuned model is left as it was


def test_keep_last_never_stops_early_and_never_restores_an_earlier_epoch() -> None:
    from models.training.callbacks import _EarlyStoppingWithBestWeights

    class Model:
        stop_training = False
        restored = None

        def get_weights(self):
            return ["weights"]

        def set_weights(self, weights):
            self.restored = weights

    for keep_last, expected_best, expected_restored in ((False, 0, ["weights"]), (True, 2, None)):
        callback = _EarlyStoppingWithBestWeights(patience=1, total_epochs=5, keep_last=keep_last)
        callback.set_model(Model())
        for epoch, loss in enumerate((1.0, 2.0, 3.0)):  # worse every epoch
            callback.on_epoch_end(epoch, {"val_loss": loss})
        callback.on_train_end()
        assert callback.best_epoch == expected_best and callback.stopped is not keep_last
        assert callback.model.restored == expected_restored


def test_the_job_gates_the_blend_it_is_told_and_the_tuned_model_at_blend_one(fer2013, pretrained_keras) -> None:  # noqa: F811
    import keras

    from models.retrain import TrainingConfig, blended

    run = train(fer2013, settings=TrainingSettings(epochs=1, learning_rate=1e-3, time_budget_s=600), start_from=pretrained_keras,
                progress=None)
    assert blended(run, fer2013, pretrained_keras, TrainingConfig(blend=1.0)) == (run.model, None)
    assert blended(run, fer2013, None, TrainingConfig(blend=0.5)) == (run.model, None)  # from scratch: nothing to blend with
    model, choice = blended(run, fer2013, pretrained_keras, TrainingConfig(blend=0.25))
    assert choice.blend == 0.25 and [row.blend for row in choice.table] == [0.25]
    start = keras.models.load_model(pretrained_keras, compile=False)
    np.testing.assert_allclose(model.get_weights()[0], 0.75 * start.get_weights()[0] + 0.25 * run.model.get_weights()[0], atol=1e-6)
    _, auto = blended(run, fer2013, pretrained_keras, TrainingConfig(blend="auto"))
    assert [row.blend for row in auto.table] == [round(0.1 * step, 1) for step in range(11)]
