"""Errors of the client, and which gRPC codes mean "Lightbulb is unavailable".

:func:`is_retryable` is the one place failures are classified: a retryable code means
Lightbulb is unreachable or unwell (retry, then fall back to the last known good answer or
the static default); any other code is Lightbulb's considered answer about the request
(raise :class:`RejectedError` at once, never mask it with stale data).
"""

from __future__ import annotations

import grpc

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


def is_retryable(code: grpc.StatusCode) -> bool:
    """Whether a failure with ``code`` is worth another attempt and, once attempts run out,
    a fallback answer.

    Retryable: the codes of an unreachable, overloaded or failing server or transport
    (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``UNKNOWN``,
    ``RESOURCE_EXHAUSTED``, ``ABORTED``, ``CANCELLED``). Everything else (``NOT_FOUND``,
    ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``, ``PERMISSION_DENIED``,
    ``UNAUTHENTICATED``, ``UNIMPLEMENTED``, ...) is an answer about the request.
    """
    return code in _RETRYABLE


class ConfigError(ValueError):
    """The :class:`~lightbulb_client.Client` was given settings it cannot work with (no
    endpoint, an invalid endpoint, a non-positive deadline, an invalid static default)."""


class LightbulbError(Exception):
    """Why :meth:`Client.resolve <lightbulb_client.Client.resolve>` returned no answer.

    Attributes:
        objective: the objective of the failed request.
    """

    #: A short label for the error kind, e.g. for a metric.
    label: str = "error"

    def __init__(self, objective: str, message: str) -> None:
        super().__init__(message)
        self.objective = objective

    @property
    def code(self) -> grpc.StatusCode | None:
        """The gRPC code behind the error; ``None`` for an invalid answer."""
        return None


class RejectedError(LightbulbError):
    """Lightbulb answered with a status that is not about availability (``NOT_FOUND`` for
    an unknown objective, ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``, ...).

    Never retried and never replaced by a fallback answer: it is a configuration or caller
    error that stale data would hide.
    """

    label = "rejected"

    def __init__(self, objective: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(
            objective,
            f"lightbulb rejected the request ({code.name}: {message}) for objective {objective!r}",
        )
        self._code = code
        #: The status message from Lightbulb.
        self.message = message

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code Lightbulb answered with."""
        return self._code


class UnavailableError(LightbulbError):
    """Lightbulb was unreachable or failed with a retryable status on every attempt, and
    there was neither a last known good answer for the context nor a static default for
    the objective."""

    label = "unavailable"

    def __init__(
        self, objective: str, attempts: int, code: grpc.StatusCode, message: str
    ) -> None:
        super().__init__(
            objective,
            f"lightbulb unavailable after {attempts} attempt(s) ({code.name}: {message}), "
            f"no fallback for objective {objective!r}",
        )
        #: Attempts made before giving up (the retry limit, or fewer when the deadline
        #: came first).
        self.attempts = attempts
        self._code = code
        #: The message of the last failure.
        self.message = message

    @property
    def code(self) -> grpc.StatusCode:
        """The code of the last failure (``DEADLINE_EXCEEDED`` when it timed out)."""
        return self._code


class InvalidResponseError(LightbulbError):
    """Lightbulb answered with something the client cannot use (no objective config, or a
    routing key that is not a valid header value). Not retried, no fallback: a retry would
    get the same answer."""

    label = "invalid_response"

    def __init__(self, objective: str, reason: str) -> None:
        super().__init__(
            objective, f"lightbulb sent an invalid answer ({reason}) for objective {objective!r}"
        )
        #: What was wrong.
        self.reason = reason
