"""Exponential backoff with jitter for providers that reconnect forever."""
from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial``, ``2*initial``, ... capped at ``maximum``, each with +-20% jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0,
                 jitter: float = 0.2) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("backoff: need 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        base = min(self.maximum, self.initial * self.factor ** self.attempts)
        self.attempts += 1
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        """Back to the initial delay after a success."""
        self.attempts = 0
