"""TensorFlow imported quietly and on demand, and Keras layers seeded from the model's own seed.

Keras gives every layer built without a seed one drawn from Python's global ``random``. Any other thread of the
process (a Prefect worker, a client's retry jitter) that draws from it in between moves those seeds, so two fits
with the same seed could start from different weights. ``LayerSeeds`` hands each layer its seed instead.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def tensorflow() -> Any:
    """Import TensorFlow without its start-up log lines, only when a model is trained or scored."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


class LayerSeeds:
    """Distinct, reproducible seeds for a network's layers, all derived from one model seed."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng([seed, 0x5EED])

    def __call__(self) -> int:
        """The next layer's seed."""
        return int(self._rng.integers(1, 2**31 - 1))

    def glorot(self) -> Any:
        """Keras' default kernel initializer (Glorot uniform), seeded."""
        import keras

        return keras.initializers.GlorotUniform(seed=self())

    def reseed_kernels(self, layer: Any) -> None:
        """Redraw every kernel of a built ``layer`` from Glorot uniform with its own seed.

        For layers such as ``MultiHeadAttention`` that clone one initializer config for each sub-projection:
        a seeded config would give the query, key, value and output kernels the same values.
        """
        for weight in layer.weights:
            if weight.name == "kernel":
                weight.assign(self.glorot()(tuple(weight.shape)))
