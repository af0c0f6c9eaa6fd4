"""When a webhook delivery is tried again, and how long one attempt may hold it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from worker.settings import Settings

RETRYABLE_STATUS = {408, 429}
# Beyond the attempt's own deadline: name resolution and the two MongoDB
# writes. A worker that dies mid-attempt holds the delivery this long.
LEASE_MARGIN_SECONDS = 30

# Jitter from a generator of the service's own: the global `random` module's
# state is the embedding program's (a test framework may seed or watch it).
_JITTER = random.Random()


def jitter(low: float, high: float) -> float:
    """A random number in [low, high], to spread retries and waits apart."""
    return _JITTER.uniform(low, high)


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        # Network errors and timeouts are retried; a refused address or a
        # disabled endpoint is not.
        if self.status_code is None:
            return self.error is not None and not self.error.startswith(("refused:", "disabled:"))
        return self.status_code in RETRYABLE_STATUS or self.status_code >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """Every timing of a delivery, from the settings in one place."""

    schedule: tuple[float, ...]  # seconds before each attempt; the first is sent at once
    timeout: float  # one attempt's total deadline
    max_retry_after: float  # cap on a receiver's Retry-After
    resend_after: float  # a due delivery already sent this recently is not sent again

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            schedule=tuple(settings.webhook_schedule),
            timeout=settings.webhook_timeout_seconds,
            max_retry_after=settings.webhook_max_retry_after_seconds,
            resend_after=settings.resend_after_seconds,
        )

    @property
    def lease_seconds(self) -> float:
        """How long an attempt holds its delivery."""
        return self.timeout + LEASE_MARGIN_SECONDS

    @property
    def time_limit(self) -> float:
        """The task's hard limit: a backstop for anything outside the attempt's own
        deadline (a name lookup that hangs), within the lease, so the sweep sends
        the delivery again after such a kill."""
        return self.timeout + LEASE_MARGIN_SECONDS / 2

    def next_delay(self, made: int, outcome: Outcome) -> float | None:
        """Seconds until the next attempt, or None when the delivery is over."""
        if outcome.delivered or not outcome.retryable or made >= len(self.schedule):
            return None
        # Jitter spreads retries of many deliveries to one receiver apart.
        delay = self.schedule[made] * jitter(0.9, 1.1)
        if outcome.retry_after is not None:
            # The receiver's Retry-After is a floor, capped so it cannot park a
            # delivery for days.
            delay = max(delay, min(outcome.retry_after, self.max_retry_after))
        return delay
