"""What both the edge and the training side need to run a model, and nothing heavier.

The model store format (:mod:`runtime.registry`), the LiteRT runner
(:mod:`runtime.tflite_runner`) and the face preprocessing both sides must
agree on (:mod:`runtime.preprocess`). Pure Python + numpy/OpenCV/LiteRT:
never TensorFlow, Keras or matplotlib (an import-linter contract in
pyproject.toml checks it), so the edge can depend on it.
"""
