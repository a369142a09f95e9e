"""The one token bucket: `rate` tokens a second up to `burst`, on a monotonic clock.

Three ways to spend a token: `try_take` answers at once whether one is there (a message that
may be dropped, as Kubernetes Events are), `take` waits for one (a request that must go, as the
Kubernetes sink's are), `reserve` spends one ahead, into debt, and says how long to wait (a
caller that paces itself and may give the token back with `refund`, as the Vault transport
does: it wakes on a time grid and will not wait past its budget). `hold` stops every `take`
until a time a server named (429 + Retry-After), then resumes at the steady rate, not with a
burst. `rate` and `burst` may be changed between calls (the Vault transport adapts its rate to
the server's 429s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`burst` tokens to start with, `rate` more a second of `clock`."""

    def __init__(
        self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.resume = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> float:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return now

    def try_take(self) -> bool:
        """Spend a token if one is there."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def reserve(self) -> float:
        """Spend a token now, into debt when there is none; returns the seconds to wait before
        using it (0 when one was there). A debt is paid by the refill, so reservations made
        together are spread `1 / rate` apart."""
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self) -> None:
        """Give back a reserved token that will not be used."""
        self.tokens += 1

    def hold(self, seconds: float) -> None:
        """No `take` before `seconds` from now; then resume at the steady rate, not a burst."""
        self.resume = max(self.resume, self._clock() + seconds)
        self.tokens = 0.0

    async def take(self) -> None:
        """Spend a token, waiting for one (and for the end of a `hold`) when there is none."""
        async with self._lock:
            while (wait := self.resume - self._clock()) > 0:
                await asyncio.sleep(wait)
            self._refill()
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self.tokens = 1.0
                self.stamp = self._clock()
            self.tokens -= 1
