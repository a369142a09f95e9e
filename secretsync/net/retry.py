"""The one back-off policy of retries: the n-th wait is `min(base_s * 2**(n-1), cap_s)` times a
random factor in [low, high), so that clients that failed together do not retry together."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    base_s: float
    cap_s: float = 10.0
    low: float = 0.5
    high: float = 1.5
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def wait(self, attempt: int) -> float:
        """Seconds to wait before try `attempt + 1` (`attempt` counts from 1)."""
        ceiling = min(self.base_s * 2.0 ** (attempt - 1), self.cap_s)
        return float(ceiling * self.rng.uniform(self.low, self.high))
