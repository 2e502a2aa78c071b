"""The retry decision: what happens after a failed attempt, as a small value.

:class:`RetryState` counts what one request has spent (attempts, same-model retries, stream
continuations); :meth:`RetryState.next` looks at one failure and answers with an
:class:`Outcome`, the seconds to wait first, and the state that follows, in the spirit of
urllib3's ``Retry.increment``. It does no I/O and touches no shared state: the attempt loop
(:mod:`modelmesh_core.attempts`) applies the decision.
"""

from __future__ import annotations

import enum
import random

from attrs import frozen

from .config import Backoff, OnBreak, ProviderRetryConfig, RetryConfig, StreamingConfig
from .errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)

__all__ = ["DEFAULT_STREAMING", "Outcome", "RetryState", "backoff", "classify"]

DEFAULT_STREAMING = StreamingConfig()
"""The streaming policy of a pool that configures none."""


class Outcome(enum.Enum):
    """What follows a failed attempt."""

    RETRY = "retry"
    """Call the same model again, after the decision's wait."""
    ROTATE = "rotate"
    """Move to the next candidate at once."""
    CONTINUE = "continue"
    """A stream broke after output reached the caller: go on at the next candidate, which
    continues the answer (prefill) or restarts it and is spliced."""
    RAISE = "raise"
    """The error is the caller's (a bad request, a content filter): raise it as it is."""
    GIVE_UP = "give_up"
    """The attempt (or continuation) budget is spent, or the policy forbids going on."""


def classify(exc: ProviderError, policy: RetryConfig, deactivate_on: tuple[int, ...]) -> Outcome:
    """The kind of an error on its own: ``RETRY`` (worth the same model again), ``ROTATE``
    (worth another model only) or ``RAISE`` (the caller's)."""
    status = exc.status
    if status is not None and status in deactivate_on:
        return Outcome.ROTATE
    if isinstance(exc, ContentFilterError):
        return Outcome.RAISE
    if isinstance(exc, RateLimitError):
        if not exc.quota and policy.backoff is Backoff.RETRY_AFTER:
            return Outcome.RETRY  # the pool asked to wait out Retry-After on the same model
        return Outcome.ROTATE
    if isinstance(exc, ProviderTimeoutError | AuthenticationError | ContextLengthError):
        return Outcome.ROTATE
    if status is not None:
        if status in policy.rotate_codes:
            return Outcome.ROTATE
        if status in policy.retryable_codes:
            return Outcome.RETRY
        if status in policy.non_retryable_codes:
            return Outcome.RAISE
    return Outcome.RETRY if exc.retryable else Outcome.RAISE


def backoff(policy: RetryConfig | ProviderRetryConfig, n: int, exc: ProviderError,
            rng: random.Random) -> float:
    """Seconds to wait before the ``n``-th same-model retry (0-based)."""
    if policy.backoff is Backoff.FIXED:
        return float(policy.initial_delay)
    if policy.backoff is Backoff.RETRY_AFTER:
        wait = exc.retry_after
        if wait is not None:
            return float(min(wait, policy.max_delay))
        return float(policy.initial_delay)
    cap = min(float(policy.max_delay), float(policy.initial_delay) * (2**n))
    return rng.uniform(0, cap)


def _transient_wait(exc: ProviderError) -> float | None:
    """The Retry-After of a transient 429 or a 503, else None."""
    if isinstance(exc, RateLimitError):
        return None if exc.quota else exc.retry_after
    if exc.status == 503:
        return exc.retry_after
    return None


@frozen
class RetryState:
    """What one request has spent so far.

    ``attempts`` counts upstream calls made (the failed one included), ``same_model`` the
    same-model retries made on the current candidate, ``continuations`` the times a broken
    stream went on at another candidate.
    """

    attempts: int = 0
    same_model: int = 0
    continuations: int = 0

    def next(
        self,
        exc: ProviderError,
        *,
        policy: RetryConfig,
        same: RetryConfig | ProviderRetryConfig,
        streaming: StreamingConfig,
        deactivate_on: tuple[int, ...],
        last: bool,
        mid_stream: bool,
        rng: random.Random,
    ) -> tuple[Outcome, float, RetryState]:
        """Decide what follows the failure ``exc``: ``(outcome, seconds to wait, next state)``.

        ``same`` is the same-model retry policy (a provider's own ``retry`` wins over the
        pool's); ``last`` says no candidate follows this one; ``mid_stream`` says output has
        already reached the caller, so only a continuation (or the end) can follow.
        """
        if mid_stream:
            if isinstance(exc, ContentFilterError):
                return Outcome.RAISE, 0.0, self
            if (streaming.on_break is OnBreak.ERROR
                    or self.continuations >= streaming.max_continuations
                    or self.attempts >= policy.max_attempts):
                return Outcome.GIVE_UP, 0.0, self
            return Outcome.CONTINUE, 0.0, RetryState(self.attempts, 0, self.continuations + 1)
        kind = classify(exc, policy, deactivate_on)
        if kind is Outcome.RAISE:
            return kind, 0.0, self
        if self.attempts >= policy.max_attempts:
            return Outcome.GIVE_UP, 0.0, self
        again = RetryState(self.attempts, self.same_model + 1, self.continuations)
        wait = _transient_wait(exc) if policy.honor_retry_after else None
        if wait is not None and wait <= policy.max_same_model_wait:
            # The pool prefers its first choice when the upstream asks for a short pause.
            return Outcome.RETRY, float(wait), again
        if kind is Outcome.RETRY and self.same_model < same.same_model_retries:
            return Outcome.RETRY, backoff(same, self.same_model, exc, rng), again
        if (last and wait is not None and isinstance(exc, RateLimitError)
                and wait <= policy.max_retry_after):
            # Nothing else to rotate to: wait as the upstream asked, then try it once more.
            return Outcome.RETRY, float(wait), again
        return Outcome.ROTATE, 0.0, RetryState(self.attempts, 0, self.continuations)
