"""Test doubles for the privacy tests."""

from __future__ import annotations

import numpy as np


class FixedWords:
    """A RandomSource that replays given words (to probe the extremes)."""

    def __init__(self, words: list[int]) -> None:
        self._words = np.array(words, dtype=np.uint64)

    def words(self, n: int) -> np.ndarray:
        return np.resize(self._words, n)
