"""Growing pauses between retries, written once.

Every loop here that retries something unreachable (the job store, the cluster bus, a child
process, a webhook receiver) waits longer after each failure in a row, up to a cap, and starts
over after a success. `Backoff` is that rule: a delay per attempt, and a counter for loops that
keep their own count. Retrying at once would spin the CPU and hammer whatever just went away;
waiting for ever would leave the service slow to notice it came back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


class Backoff:
    """Capped exponential delays: `base`, `base * factor`, ... up to `cap`.

    Or, with `steps` (see `stepped`), an explicit schedule whose last delay repeats. `jitter`
    shortens each delay by a random fraction of up to that much of itself, so many clients
    that failed together do not all come back together.

    `delay(attempt)` is stateless (1-based attempt); `next()` counts failures in a row and
    `reset()` starts the count over.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        steps: Sequence[float] = (),
        rand: Callable[[], float] | None = None,
    ) -> None:
        if base < 0 or cap < base:
            raise ValueError(f"backoff needs 0 <= base <= cap, got base={base} cap={cap}")
        if factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {jitter}")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.steps = tuple(steps)
        self._rand = rand  # None: the random module's, looked up at each use
        self.attempts = 0  # failures in a row counted by next()

    @classmethod
    def stepped(cls, steps: Sequence[float], *, jitter: float = 0.0) -> Backoff:
        """An explicit schedule, for pauses that do not grow by a constant factor."""
        if not steps or min(steps) < 0:
            raise ValueError(f"a stepped backoff needs one or more delays, none negative, got {steps!r}")
        return cls(min(steps), max(steps), jitter=jitter, steps=steps)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        n = max(attempt, 1) - 1
        if self.steps:
            pause = self.steps[min(n, len(self.steps) - 1)]
        else:
            try:
                grown = self.base * self.factor**n
            except OverflowError:  # far past any cap
                grown = self.cap if self.base else 0.0
            pause = min(self.cap, grown)
        if self.jitter:
            pause *= 1 - self.jitter * (self._rand or random.random)()
        return pause

    def next(self) -> float:
        """Count one more failure in a row; the delay to wait before trying again."""
        self.attempts += 1
        return self.delay(self.attempts)

    def reset(self) -> None:
        """It worked (or has been fine long enough): the next failure waits `base` again."""
        self.attempts = 0

    def __repr__(self) -> str:
        shape = (
            f"steps={self.steps}" if self.steps else f"base={self.base}, cap={self.cap}, factor={self.factor}"
        )
        return f"Backoff({shape}, jitter={self.jitter}, attempts={self.attempts})"
