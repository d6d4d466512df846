"""Training the mini-Xception emotion classifier, in parts:

* :mod:`models.training.data` — settings, labelled faces and the model's inputs (no TensorFlow:
  the gate and the model card use it);
* :mod:`models.training.augmentation` — the ``tf.data`` pipeline: warp, random erasing, mixup;
* :mod:`models.training.graph` — the oneDNN work-around in the training graph;
* :mod:`models.training.callbacks` — throughput, validation, early stopping, budget, target, resume, progress;
* :mod:`models.training.loop` — :func:`train`;
* :mod:`models.training.interpolation` — blending the tuned weights with the starting model's (WiSE-FT).

Importing this package does not import TensorFlow; the names of the TensorFlow
parts are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.training.data import (
    MIN_VALIDATION_SAMPLES,
    LabelledFaces,
    TrainingData,
    TrainingSettings,
    check_labelled_faces,
    class_counts,
    model_inputs,
    validation_inputs,
)

_LAZY = {
    "train": "loop", "TrainingRun": "loop", "choose_monitored_set": "loop", "print_progress": "loop",
    "learning_rate_schedule": "loop", "choose_blend": "interpolation", "pick_blend": "interpolation", "BlendChoice": "interpolation",
    "training_dataset": "augmentation", "augment_faces": "augmentation", "_output_to_input_transforms": "augmentation",
    "erase_random_rectangles": "augmentation", "mix_up": "augmentation",
    "SubsampledPointwiseConv2D": "graph", "training_graph": "graph", "copy_weights": "graph",
    "_EarlyStoppingWithBestWeights": "callbacks", "loss_and_accuracy": "callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"models.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'models.training' has no attribute {name!r}")


__all__ = [
    "MIN_VALIDATION_SAMPLES", "LabelledFaces", "TrainingData", "TrainingSettings", "check_labelled_faces", "class_counts",
    "model_inputs", "validation_inputs", *_LAZY,
]
