"""Typed exceptions: one root for everything matteserve raises on purpose.

Each boundary (Triton python models, the gateway, the client) translates these into its own
transport's errors in one place, with ``raise ... from e`` so the cause is kept.
"""

# What of a caller's string goes into a message or a log line: enough to recognise it, never the
# megabyte a caller may send.
QUOTE_LIMIT = 64


def quote(text: str | bytes, limit: int = QUOTE_LIMIT) -> str:
    """``repr(text)`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more)"


class MatteserveError(Exception):
    """Root of every error matteserve raises on purpose."""


class InvalidImage(MatteserveError):
    """The bytes are not an image matteserve can serve (format, corruption, size or shape)."""


class ImageTooLarge(InvalidImage):
    """The image declares more pixels than the configured limit."""


class ResultTooLarge(MatteserveError):
    """The result is larger than one message may carry; a smaller image or output format fits."""


class InvalidOptions(MatteserveError):
    """A per-request option is unknown or out of range."""


class Overloaded(MatteserveError):
    """The service has no room for the request right now; retry later."""


class BackendUnavailable(MatteserveError):
    """No inference backend could take the request."""


class Timeout(MatteserveError):
    """The request's deadline passed before it finished."""


class Unauthenticated(MatteserveError):
    """The caller's credentials are missing or wrong."""


class ModelError(MatteserveError):
    """A model file cannot be fetched, prepared or served; the message says what to do."""
