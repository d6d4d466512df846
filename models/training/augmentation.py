"""The training input pipeline and its augmentations (TensorFlow ``tf.data``).

* Arriaga's ``ImageDataGenerator`` (rotation 10 deg, shifts 10 %, independent
  x/y zoom 10 %, horizontal flip, nearest fill) as ONE random affine warp per
  image inside a ``tf.data`` map, on training batches only. Composing the four
  transforms into one warp interpolates once (less blur and less work than
  chaining Keras' RandomRotation, RandomTranslation and RandomZoom layers,
  which resample the image three times); measured cost on 2 cores: about 2 %
  of training throughput.
* Optional random erasing and mixup, for training a base model from scratch.
* Every random choice derives from the seed: the shuffle order, and a
  per-batch stateless seed from ``tf.data.Dataset.random``, so parallel map
  workers cannot reorder draws.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from contract.emotions import NUM_EMOTIONS
from models.training.data import model_inputs

# Arriaga's ImageDataGenerator settings (train_emotion_classifier.py).
ROTATION_DEGREES = 10.0
SHIFT_FRACTION = 0.1
ZOOM_FRACTION = 0.1



def training_dataset(
    faces: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: bool,
    *,
    random_erasing: float = 0.0,
    mixup_alpha: float = 0.0,
    one_hot: bool = False,
) -> tf.data.Dataset:
    """Shuffled (and optionally augmented) batches of normalised faces and labels, one epoch per iteration.

    Labels are int64, or one-hot float32 with ``one_hot`` (needed for label
    smoothing and for mixup, which mixes the targets as it mixes the faces);
    float (N, NUM_EMOTIONS) ``labels`` are soft targets, used as they are.
    Shuffling indices rather than images keeps one copy of the faces in
    memory; the order and the augmentation change every epoch, deterministically
    for a given seed.
    """
    inputs = tf.constant(model_inputs(faces))
    labels = np.asarray(labels)
    if labels.ndim == 2:  # soft targets already (N, NUM_EMOTIONS), e.g. distilled ones
        targets = tf.constant(labels.astype(np.float32))
    else:
        targets = tf.constant(labels.astype(np.int64))
        if one_hot or mixup_alpha > 0:
            targets = tf.one_hot(targets, NUM_EMOTIONS, dtype=tf.float32)
    count = len(labels)
    indices = tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda batch_indices: (tf.gather(inputs, batch_indices), tf.gather(targets, batch_indices)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augment or random_erasing > 0 or mixup_alpha > 0:
        # One 2-integer stateless seed per batch, different every epoch: the
        # draws do not depend on which parallel worker runs which batch.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        steps = _Augmentations(augment, random_erasing, mixup_alpha)
        batches = tf.data.Dataset.zip((batches, batch_seeds)).map(steps, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


class _Augmentations:
    """The per-batch augmentation steps, in order: warp, erase, mix (each with its own seed)."""

    def __init__(self, warp: bool, random_erasing: float, mixup_alpha: float) -> None:
        self.warp, self.random_erasing, self.mixup_alpha = warp, random_erasing, mixup_alpha

    def __call__(self, batch: tuple[tf.Tensor, tf.Tensor], batch_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        faces, targets = batch
        seeds = tf.random.experimental.stateless_split(tf.cast(batch_seed, tf.int64), num=3)
        if self.warp:
            faces = augment_faces(faces, seeds[0])
        if self.random_erasing > 0:
            faces = erase_random_rectangles(faces, seeds[1], self.random_erasing)
        if self.mixup_alpha > 0:
            faces, targets = mix_up(faces, targets, seeds[2], self.mixup_alpha)
        return faces, targets


def erase_random_rectangles(faces: tf.Tensor, seed: tf.Tensor, probability: float) -> tf.Tensor:
    """Random erasing (Zhong et al., 2020): with ``probability``, one rectangle per face becomes noise.

    The rectangle covers 2-25 % of the face with an aspect ratio in [0.3, 3.3];
    it is filled with uniform values of the input range [-1, 1], so the model
    cannot learn a constant "erased" colour. Partly hidden faces (a hand, a
    cup, a mask) are common in front of a camera.
    """
    shape = tf.shape(faces)
    count, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    side_h, side_w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = tf.random.stateless_uniform([count], seeds[0], 0.02, 0.25) * side_h * side_w
    log_ratio = tf.random.stateless_uniform([count], seeds[1], math.log(0.3), math.log(3.3))
    rect_h = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), side_h)
    rect_w = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), side_w)
    top = tf.random.stateless_uniform([count], seeds[2], 0.0, 1.0) * (side_h - rect_h)
    left = tf.random.stateless_uniform([count], seeds[3], 0.0, 1.0) * (side_w - rect_w)
    chosen = tf.random.stateless_uniform([count], seeds[4], 0.0, 1.0) < probability
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    columns = tf.cast(tf.range(width), tf.float32)[None, None, :]
    inside = (
        (rows >= top[:, None, None]) & (rows < (top + rect_h)[:, None, None])
        & (columns >= left[:, None, None]) & (columns < (left + rect_w)[:, None, None])
        & chosen[:, None, None]
    )
    noise = tf.random.stateless_uniform(tf.shape(faces), seeds[5], -1.0, 1.0)
    return tf.where(inside[..., None], noise, faces)


def mix_up(faces: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """mixup (Zhang et al., 2018): each face blended with another of the batch, targets alike.

    The weight of the face's own image is drawn per face from Beta(alpha, alpha)
    (as a ratio of two Gamma draws) and kept >= 0.5, so each mixed face is
    mostly itself; the partner is the batch in reverse order.
    """
    count = tf.shape(faces)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    first = tf.random.stateless_gamma([count], seeds[0], alpha=alpha)
    second = tf.random.stateless_gamma([count], seeds[1], alpha=alpha)
    weight = first / tf.maximum(first + second, 1e-12)
    weight = tf.maximum(weight, 1.0 - weight)
    mixed_faces = weight[:, None, None, None] * faces + (1.0 - weight[:, None, None, None]) * tf.reverse(faces, [0])
    mixed_targets = weight[:, None] * targets + (1.0 - weight[:, None]) * tf.reverse(targets, [0])
    return mixed_faces, mixed_targets


def augment_faces(faces: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Randomly flip, rotate, shift and zoom a batch of faces (N, H, W, 1) with one affine warp each.

    The ranges are Arriaga's: rotation +-10 degrees, shift +-10 % of the side,
    zoom factors in [0.9, 1.1] drawn independently for x and y, horizontal flip
    with probability 1/2; bilinear interpolation, borders filled with the
    nearest pixel.  ``seed`` is a (2,) integer tensor; equal seeds give equal warps.
    """
    shape = tf.shape(faces)
    count, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)

    def uniform(index: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([count], seed=seeds[index], minval=low, maxval=high)

    angle = uniform(0, -ROTATION_DEGREES, ROTATION_DEGREES) * (math.pi / 180.0)
    zoom_x = uniform(1, 1.0 - ZOOM_FRACTION, 1.0 + ZOOM_FRACTION)
    zoom_y = uniform(2, 1.0 - ZOOM_FRACTION, 1.0 + ZOOM_FRACTION)
    shift_x = uniform(3, -SHIFT_FRACTION, SHIFT_FRACTION) * width
    shift_y = uniform(4, -SHIFT_FRACTION, SHIFT_FRACTION) * height
    flip = tf.where(uniform(5, 0.0, 1.0) < 0.5, -1.0, 1.0)
    transforms = _output_to_input_transforms(angle, zoom_x, zoom_y, shift_x, shift_y, flip, height, width)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=faces,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def _output_to_input_transforms(
    angle: tf.Tensor,
    zoom_x: tf.Tensor,
    zoom_y: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    flip: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tf.Tensor:
    """Rows [a0, a1, a2, b0, b1, b2, 0, 0] mapping each output pixel (x, y) to the input pixel it samples.

    input = centre + R(angle) . diag(zoom_x, zoom_y) . diag(flip, 1) . (output - centre) + shift,
    with the centre at ((W - 1) / 2, (H - 1) / 2) so that a flip maps pixel
    columns exactly onto each other.
    """
    cosine, sine = tf.cos(angle), tf.sin(angle)
    a0, a1 = cosine * zoom_x * flip, -sine * zoom_y
    b0, b1 = sine * zoom_x * flip, cosine * zoom_y
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = centre_x - (a0 * centre_x + a1 * centre_y) + shift_x
    b2 = centre_y - (b0 * centre_x + b1 * centre_y) + shift_y
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
