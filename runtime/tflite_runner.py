"""Run the emotion model with LiteRT, without TensorFlow.

The edge agent uses this: it imports ``ai_edge_litert`` only, so the edge
process stays small (no TensorFlow import, a fraction of the memory).
"""

from __future__ import annotations

import os

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from contract.emotions import NUM_EMOTIONS


class TFLiteEmotionModel:
    """A float32 mini-Xception TFLite model that classifies a batch of faces per call.

    The exported model has a dynamic batch dimension.  The interpreter is
    resized (and its tensors re-allocated) only when the number of faces
    differs from the previous call, because re-allocation costs far more
    than the inference itself on a 64x64 input.
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int = 1) -> None:
        self.path = os.fspath(path)
        self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.face_shape: tuple[int, ...] = tuple(int(side) for side in self._input["shape"][1:])
        self._check_signature()
        self._batch_size = 0
        self._resize_batch(1)

    def predict(self, normalized_batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) float32 for a normalised batch (N, 64, 64, 1) float32.

        Build the batch with ``runtime.preprocess.prepare_faces``.  N may be 0,
        which returns an empty (0, 7) array without running the model.
        """
        batch = np.asarray(normalized_batch)
        self._check_batch(batch)
        if batch.shape[0] == 0:
            return np.empty((0, NUM_EMOTIONS), dtype=np.float32)
        if batch.shape[0] != self._batch_size:
            self._resize_batch(batch.shape[0])
        self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        # get_tensor copies, so the result survives the next invoke.
        return self._interpreter.get_tensor(self._output["index"])

    def _resize_batch(self, batch_size: int) -> None:
        self._interpreter.resize_tensor_input(self._input["index"], [batch_size, *self.face_shape])
        self._interpreter.allocate_tensors()
        self._batch_size = batch_size

    def _check_signature(self) -> None:
        """Fail at load time, not at the first face, if the file is not the expected model."""
        if self._input["dtype"] != np.float32:
            raise ValueError(f"{self.path}: expected a float32 input, model has {self._input['dtype']}")
        output_classes = int(self._output["shape"][-1])
        if output_classes != NUM_EMOTIONS:
            raise ValueError(f"{self.path}: expected {NUM_EMOTIONS} outputs, model has {output_classes}")
        batch_signature = int(self._input["shape_signature"][0])
        if batch_signature != -1:
            raise ValueError(f"{self.path}: the batch dimension is fixed to {batch_signature}, expected dynamic")

    def _check_batch(self, batch: np.ndarray) -> None:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.face_shape:
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, self.face_shape))}), got {batch.shape}"
            )
        if batch.dtype != np.float32:
            raise TypeError(f"expected float32 faces from runtime.preprocess.normalize_faces, got {batch.dtype}")
