"""Arriaga's mini-Xception emotion classifier, defined in our own code (Keras 3).

The layer names are ours and descriptive (``module2_sepconv1`` rather than the
auto-generated ``separable_conv2d_3`` of the original Keras 2.0.5 file), so a
saved model can be read without the original source at hand.  The
correspondence with the names in Arriaga's pretrained HDF5 file lives in
``ARRIAGA_LAYER_NAMES`` below, next to the definition it describes.
"""

from __future__ import annotations

import keras
from keras import layers

# Filters of the four residual depthwise-separable modules, in order.
MODULE_FILTERS: tuple[int, ...] = (16, 32, 64, 128)
# Filters of the two plain convolutions in the stem ("base" in the paper's code).
BASE_FILTERS: int = 8


def build_mini_xception(
    input_shape: tuple[int, int, int] = (64, 64, 1),
    num_classes: int = 7,
    l2_regularization: float = 0.01,
) -> keras.Model:
    """Build the mini-Xception facial-emotion classifier of Arriaga et al.

    A stem of two 3x3 convolutions (8 filters, valid padding) is followed by
    four residual modules.  Each module has a main branch of two 3x3
    depthwise-separable convolutions and a 3x3/stride-2 max-pool, and a
    shortcut branch of a 1x1/stride-2 convolution; the two are added.  A 3x3
    convolution to ``num_classes`` maps, global average pooling and a softmax
    give the class probabilities.  There is no dense layer, which keeps the
    model at about 58k parameters.

    L2 weight decay is applied only to the two stem convolutions.  Arriaga's
    source also passes ``kernel_regularizer`` to the separable convolutions,
    but Keras 2.0.5 ignored that argument for ``SeparableConv2D`` (the saved
    model config shows no depthwise or pointwise regularizer), so the model
    that was actually trained, and that we reproduce, had none there.

    # Arguments
        input_shape: Shape of one input image, (height, width, channels).
            The pretrained weights expect (64, 64, 1): grey faces scaled to
            [-1, 1] (see ``runtime.preprocess.normalize_faces``).
        num_classes: Number of output classes; 7 for FER2013, in the order of
            ``contract.emotions.EMOTIONS``.
        l2_regularization: L2 penalty factor on the stem convolution kernels.
            Only matters for training; it has no effect on inference.

    # Returns
        An uncompiled ``keras.Model`` named ``mini_xception`` mapping a batch
        of images (N, *input_shape) to softmax probabilities (N, num_classes).

    # References
        - O. Arriaga, M. Valdenegro-Toro, P. Plöger, "Real-time Convolutional
          Neural Networks for Emotion and Gender Classification", 2017,
          arXiv:1710.07557.
        - oarriaga/face_classification, ``src/models/cnn.py``,
          ``mini_XCEPTION`` (the definition this one reproduces).
        - F. Chollet, "Xception: Deep Learning with Depthwise Separable
          Convolutions", CVPR 2017, arXiv:1610.02357.
    """
    regularizer = keras.regularizers.L2(l2_regularization)
    image = keras.Input(shape=input_shape, name="face")
    features = _stem(image, regularizer)
    for module_index, filters in enumerate(MODULE_FILTERS, start=1):
        features = _residual_separable_module(features, filters, f"module{module_index}")
    probabilities = _classifier_head(features, num_classes)
    return keras.Model(image, probabilities, name="mini_xception")


def _stem(image: keras.KerasTensor, regularizer: keras.regularizers.Regularizer) -> keras.KerasTensor:
    """Two 3x3 valid convolutions with batch norm and ReLU (64x64 -> 60x60)."""
    features = image
    for conv_index in (1, 2):
        features = layers.Conv2D(
            BASE_FILTERS,
            (3, 3),
            strides=(1, 1),
            padding="valid",
            use_bias=False,  # batch norm follows, so a bias would be redundant
            kernel_regularizer=regularizer,
            name=f"base_conv{conv_index}",
        )(features)
        features = layers.BatchNormalization(name=f"base_bn{conv_index}")(features)
        features = layers.Activation("relu", name=f"base_relu{conv_index}")(features)
    return features


def _residual_separable_module(features: keras.KerasTensor, filters: int, prefix: str) -> keras.KerasTensor:
    """One residual module: separable convolutions + max-pool, plus a strided 1x1 shortcut."""
    shortcut = layers.Conv2D(
        filters, (1, 1), strides=(2, 2), padding="same", use_bias=False, name=f"{prefix}_residual_conv"
    )(features)
    shortcut = layers.BatchNormalization(name=f"{prefix}_residual_bn")(shortcut)

    main = layers.SeparableConv2D(filters, (3, 3), padding="same", use_bias=False, name=f"{prefix}_sepconv1")(features)
    main = layers.BatchNormalization(name=f"{prefix}_bn1")(main)
    main = layers.Activation("relu", name=f"{prefix}_relu1")(main)
    main = layers.SeparableConv2D(filters, (3, 3), padding="same", use_bias=False, name=f"{prefix}_sepconv2")(main)
    main = layers.BatchNormalization(name=f"{prefix}_bn2")(main)
    main = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same", name=f"{prefix}_pool")(main)

    return layers.Add(name=f"{prefix}_add")([main, shortcut])


def _classifier_head(features: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """A 3x3 convolution to one map per class, averaged spatially, then softmax."""
    class_maps = layers.Conv2D(num_classes, (3, 3), padding="same", name="classifier_conv")(features)
    logits = layers.GlobalAveragePooling2D(name="global_average_pool")(class_maps)
    return layers.Activation("softmax", name="predictions")(logits)


def _arriaga_layer_names() -> dict[str, str]:
    """Map our layer names to the auto-generated names in Arriaga's HDF5 file.

    Keras 2 numbered layers per class in creation order.  Arriaga's code
    creates, in each module, the shortcut convolution and its batch norm
    before the main branch, which is why e.g. module 1's main-branch batch
    norms are ``batch_normalization_4`` and ``_5`` and its shortcut's is ``_3``.
    Only layers that hold weights are listed.
    """
    names = {
        "base_conv1": "conv2d_1",
        "base_bn1": "batch_normalization_1",
        "base_conv2": "conv2d_2",
        "base_bn2": "batch_normalization_2",
    }
    for module_index in range(1, len(MODULE_FILTERS) + 1):
        prefix = f"module{module_index}"
        names[f"{prefix}_residual_conv"] = f"conv2d_{module_index + 2}"
        names[f"{prefix}_residual_bn"] = f"batch_normalization_{3 * module_index}"
        names[f"{prefix}_sepconv1"] = f"separable_conv2d_{2 * module_index - 1}"
        names[f"{prefix}_bn1"] = f"batch_normalization_{3 * module_index + 1}"
        names[f"{prefix}_sepconv2"] = f"separable_conv2d_{2 * module_index}"
        names[f"{prefix}_bn2"] = f"batch_normalization_{3 * module_index + 2}"
    names["classifier_conv"] = f"conv2d_{len(MODULE_FILTERS) + 3}"
    return names


ARRIAGA_LAYER_NAMES: dict[str, str] = _arriaga_layer_names()
