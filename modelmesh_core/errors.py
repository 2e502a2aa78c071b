"""The ModelMesh exception tree.

Every error raised by ModelMesh derives from :class:`ModelMeshError`. Messages name what
failed (plugin, provider, model, config path) and what to do about it. Secrets never appear
in a message: provider adapters pass upstream error text through :func:`redact` first.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "AllProvidersExhaustedError",
    "AuthenticationError",
    "BatchRequestNotRunError",
    "BudgetExceededError",
    "CapabilityNotFoundError",
    "ConfigError",
    "ContentFilterError",
    "ContextLengthError",
    "InvalidRequestError",
    "ModelMeshError",
    "NoActiveModelError",
    "PluginError",
    "PluginLoadWarning",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RoutingError",
    "StreamInterruptedError",
    "did_you_mean",
]


def did_you_mean(word: str, options: Iterable[str], n: int = 1) -> str:
    """The one wording of every "did you mean" hint: ``" (did you mean 'x'?)"``, with up to
    ``n`` close matches (``'a', 'b' or 'c'``), or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=n)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f" (did you mean {listed}?)"


class ModelMeshError(Exception):
    """Root of every error ModelMesh raises."""


class ConfigError(ModelMeshError):
    """The configuration is invalid.

    ``errors`` holds every problem found, each as ``"path: message"``; the exception message
    lists them all, one per line.
    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        count = len(self.errors)
        head = f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n  ".join([head, *self.errors]))


class PluginError(ModelMeshError):
    """A plugin failed to load, conflicts with another plugin, or registered an invalid record."""


class PluginLoadWarning(UserWarning):
    """An installed plugin failed to load and was skipped (issued through :mod:`warnings`, so
    an application embedding ModelMesh sees it without enabling ModelMesh's logger)."""

class InvalidRequestError(ModelMeshError):
    """The caller's request cannot be sent as it is (too deeply nested, not encodable, …).

    Raised by adapters while building the upstream body, before anything is sent; the router
    passes it to the caller unchanged: it says nothing about the model's health, so it is
    never recorded against the model and never moves the request to another candidate.
    ``param`` names the offending field when known; ``status`` is 400.
    """

    status = 400

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RoutingError(ModelMeshError):
    """No model could be chosen or no model could serve the request.

    ``reasons`` maps a candidate (model id, pool or stage name) to why it was dropped.
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        self.reasons: dict[str, str] = dict(reasons or {})
        if self.reasons:
            detail = "; ".join(f"{k}: {v}" for k, v in self.reasons.items())
            message = f"{message} ({detail})"
        super().__init__(message)


class CapabilityNotFoundError(RoutingError):
    """The requested capability, alias or virtual model name matches nothing."""


class NoActiveModelError(RoutingError):
    """A pool matched but every model in it was filtered out (standby, cooldown, budget, …).

    ``retry_after`` is the number of seconds until the first of them comes back on its own
    (cooldown or Retry-After expiry), or None when none will without intervention;
    ``rate_limited`` is True when every one of them is held back by an upstream rate limit or
    quota (the proxy answers 429 then, 503 otherwise).
    """

    retry_after: float | None = None
    rate_limited: bool = False


class AllProvidersExhaustedError(RoutingError):
    """Every candidate was tried and failed.

    ``attempts`` lists ``(model_id, error)`` pairs in the order they were tried;
    ``last_error`` is the final error.
    """

    def __init__(
        self,
        message: str,
        attempts: Sequence[tuple[str, BaseException]] = (),
        last_error: BaseException | None = None,
    ) -> None:
        self.attempts: list[tuple[str, BaseException]] = list(attempts)
        self.last_error = last_error
        reasons = {model: _short(err) for model, err in self.attempts}
        super().__init__(message, reasons)

    @property
    def retry_after(self) -> float | None:
        """Smallest Retry-After among the attempts when they were all rate limited, else None."""
        waits = [e.retry_after for _, e in self.attempts if isinstance(e, RateLimitError)]
        if not waits or len(waits) != len(self.attempts):
            return None
        known = [w for w in waits if w is not None]
        return min(known) if known else None


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class ProviderError(ModelMeshError):
    """An upstream provider call failed.

    Attributes:
        provider_id: configured provider name (e.g. ``"alpha"``).
        model_id: ModelMesh model id (e.g. ``"alpha.gpt-4o-mini"``), or None.
        status: HTTP status of the upstream answer, or None for transport errors.
        retryable: whether retrying (same or another model) may succeed.
        headers: selected upstream response headers (rate-limit and retry-after only).
        rate_limit: those headers parsed (a ``RateLimitInfo``), when the adapter read them;
            the router stores it in the model's state so limits are seen before the next 429.
        retry_after: seconds the upstream asked to wait (its ``Retry-After`` header, on a 429
            or a 503), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        provider_id: str = "",
        model_id: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        rate_limit: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider_id = provider_id
        self.retry_after = retry_after
        self.rate_limit = rate_limit
        self.model_id = model_id
        self.status = status
        self.retryable = retryable
        self.headers: dict[str, str] = dict(headers or {})
        where = f"provider {provider_id!r}" if provider_id else "provider"
        if model_id:
            where += f", model {model_id!r}"
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where}{code}: {message}")
        self.detail = message


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (401/403). Check the provider's API key."""


class RateLimitError(ProviderError):
    """The provider answered 429.

    ``retry_after`` is the wait in seconds the provider asked for (None if it did not say);
    ``quota`` is True when the 429 means an exhausted account quota rather than a transient
    per-minute limit.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, quota: bool = False, **kw: Any
    ) -> None:
        kw.setdefault("retryable", True)
        kw.setdefault("status", 429)
        super().__init__(message, retry_after=retry_after, **kw)
        self.quota = quota


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time. ``phase`` is connect, first_byte, idle or total."""

    def __init__(self, message: str, *, phase: str = "total", **kw: Any) -> None:
        kw.setdefault("retryable", True)
        super().__init__(message, **kw)
        self.phase = phase


class ContextLengthError(ProviderError):
    """The request exceeds the model's context window."""


class ContentFilterError(ProviderError):
    """The provider refused the request or the answer on content-policy grounds."""


class BatchRequestNotRunError(ProviderError):
    """A request of a batch that never ran: the batch was cancelled or its completion window
    passed first. ``code`` is ``batch_cancelled`` or ``batch_expired`` (OpenAI's words);
    an expired request is retryable, a cancelled one is not."""

    def __init__(self, message: str, *, code: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", code == "batch_expired")
        super().__init__(message, **kwargs)
        self.code = code


class StreamInterruptedError(ProviderError):
    """A stream broke: the connection was cut, it stalled, or it ended without its terminal
    event.

    Raised by adapters for the break itself (retryable: the router continues the stream on
    another candidate when its policy allows), and by the router when a stream that already
    delivered output to the caller cannot be continued (``retryable=False``; ``delivered`` is
    the text the caller received). It is never reported as a success.
    """

    delivered: str = ""


class BudgetExceededError(ModelMeshError):
    """A budget would be or has been exceeded.

    Attributes: ``limit_type`` (e.g. ``"daily"``), ``limit`` and ``actual`` in USD, ``scope``
    (``"global"``, ``"provider:<name>"``, ``"pool:<name>"``).
    """

    def __init__(self, limit_type: str, limit: float, actual: float, scope: str = "global") -> None:
        self.limit_type = limit_type
        self.limit = limit
        self.actual = actual
        self.scope = scope
        super().__init__(
            f"{scope} {limit_type} budget of ${limit:.4f} exceeded (at ${actual:.4f}); "
            "raise the budget or wait for the window to reset"
        )
