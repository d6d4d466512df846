"""A work-around in the training graph: TensorFlow 2.21's oneDNN CPU kernels crash in one backward pass.

They corrupt the heap (SIGSEGV) in the gradient of a 1x1 stride-2
convolution, which is what mini-Xception's residual shortcuts are. For a 1x1
kernel, a stride-2 convolution equals taking every second pixel then a
stride-1 convolution, so training runs on a copy of the model whose shortcuts
are built that way (:class:`SubsampledPointwiseConv2D`) and the weights are
copied back into the canonical ``build_mini_xception`` model at the end. This
keeps oneDNN on (measured on 2 cores, batch 32: about 350 images/s against
150-220 with ``TF_ENABLE_ONEDNN_OPTS=0``) and does not depend on the order in
which modules import TensorFlow (that variable only works if set before the
first import).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class SubsampledPointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution with stride s computed as "every s-th pixel, then a stride-1 1x1 convolution".

    Numerically the same as ``Conv2D(kernel_size=1, strides=s)`` with "same" or
    "valid" padding (a 1x1 kernel never needs padding), with the same weights,
    but its gradient avoids the crashing oneDNN kernel (see the module docstring).
    """

    def __init__(self, subsample: int, **conv_config: Any) -> None:
        super().__init__(**{**conv_config, "strides": (1, 1), "padding": "valid"})
        self.subsample = subsample

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(inputs[:, :: self.subsample, :: self.subsample, :])

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        subsampled = (batch, _ceil_divide(height, self.subsample), _ceil_divide(width, self.subsample), channels)
        return super().compute_output_shape(subsampled)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "subsample": self.subsample}


def _ceil_divide(size: int | None, divisor: int) -> int | None:
    return None if size is None else -(-size // divisor)


def _training_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh copy of ``layer``; strided 1x1 convolutions become ``SubsampledPointwiseConv2D``."""
    config = layer.get_config()
    if type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) != (1, 1):
        row_stride, column_stride = layer.strides
        if row_stride != column_stride or tuple(layer.dilation_rate) != (1, 1):
            return layer.__class__.from_config(config)  # not a shape the subsampling covers; keep as is
        conv_config = {key: value for key, value in config.items() if key != "strides"}
        return SubsampledPointwiseConv2D(row_stride, **conv_config)
    return layer.__class__.from_config(config)


def training_graph(model: keras.Model) -> keras.Model:
    """A copy of ``model`` that trains without the crashing oneDNN kernel, with the same weights."""
    trainable = keras.models.clone_model(model, clone_function=_training_layer)
    copy_weights(model, trainable)
    return trainable


def copy_weights(source: keras.Model, destination: keras.Model) -> None:
    """Copy every layer's weights by layer name (never by position), including batch-norm statistics."""
    for layer in destination.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
