"""Typed wire errors: decoding raises only these, and each maps to one code in an ERROR reply."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by ERROR replies; the client's reaction depends only on the code."""

    MALFORMED = 1
    VERSION_MISMATCH = 2
    FRAME_TOO_LARGE = 3
    OVERLOADED = 4
    UNKNOWN_SESSION = 5
    AUTH_FAILED = 6
    MODEL_MISMATCH = 7
    OUT_OF_SYNC = 8
    INVALID_TOKEN = 9
    LIMIT_EXCEEDED = 10
    UNSUPPORTED = 11
    INTERNAL = 12
    BAD_DISTRIBUTION = 13
    STALE_EPOCH = 14
    RATE_LIMITED = 15
    STALE_DRAFT = 16


class WireError(Exception):
    """Base of every protocol error; ``code`` is what goes back to the peer."""

    code: ErrorCode = ErrorCode.MALFORMED


class MalformedFrame(WireError):
    code = ErrorCode.MALFORMED


class VersionMismatch(WireError):
    code = ErrorCode.VERSION_MISMATCH


class FrameTooLarge(WireError):
    code = ErrorCode.FRAME_TOO_LARGE


class Overloaded(WireError):
    """The server is full; ``retry_after_ms`` (0: no hint) says when asking again makes sense."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str = "", retry_after_ms: int = 0):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class UnknownSession(WireError):
    code = ErrorCode.UNKNOWN_SESSION


class AuthFailed(WireError):
    code = ErrorCode.AUTH_FAILED


class ModelMismatch(WireError):
    code = ErrorCode.MODEL_MISMATCH


class OutOfSync(WireError):
    code = ErrorCode.OUT_OF_SYNC


class InvalidToken(WireError):
    code = ErrorCode.INVALID_TOKEN


class LimitExceeded(WireError):
    code = ErrorCode.LIMIT_EXCEEDED


class Unsupported(WireError):
    code = ErrorCode.UNSUPPORTED


class BadDistribution(WireError):
    """A draft distribution q that is not one: wrong sum, duplicate ids, or the drafted token
    missing from its own support. Verifying against it would silently skew the output."""

    code = ErrorCode.BAD_DISTRIBUTION


class StaleEpoch(WireError):
    """A message from a connection the client has since replaced: refused, never applied."""

    code = ErrorCode.STALE_EPOCH


class RateLimited(WireError):
    """This connection sent more requests per second than the daemon's ``--max-rate``."""

    code = ErrorCode.RATE_LIMITED


class StaleDraft(WireError):
    """A chained DRAFT whose guess did not hold (the round before it was not wholly accepted,
    or the target's next token was another): dropped unverified, nothing changed. Expected,
    not a fault: the client drafts again from the verdict it already has."""

    code = ErrorCode.STALE_DRAFT


# Every typed error defined above, by its code (derived, so a new class cannot be forgotten).
_BY_CODE: dict[ErrorCode, type[WireError]] = {cls.code: cls for cls in WireError.__subclasses__()}


def error_for_code(code: ErrorCode, message: str, retry_after_ms: int = 0) -> WireError:
    """Rebuild the typed error a peer reported, so the client can react by type."""
    cls = _BY_CODE.get(code, WireError)
    err = Overloaded(message, retry_after_ms) if cls is Overloaded else cls(message)
    err.code = code
    return err
