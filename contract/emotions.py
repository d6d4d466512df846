"""The seven FER2013 emotion classes, in the model's output order.

Every component (edge classifier, wire schema, storage, training) takes the
class order from here, so a probability vector means the same everywhere.
"""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

NUM_EMOTIONS = len(EMOTIONS)
