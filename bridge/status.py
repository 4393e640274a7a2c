"""The ONE place that decides what a JetStream status or API error means for the pull loop.

Pull inboxes receive status messages (``NATS/1.0 <code> <description>``) and API calls
answer with ``{"error": {"code", "err_code", "description"}}``; both are classified here by
code (the description is consulted only to split the 409 family, which shares one code).
Modelled on nats.go's ``pullSubscription.handleStatusMsg`` and ADR-37.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple

__all__ = [
    "CODE_BAD_REQUEST",
    "CODE_CLOSED",
    "CODE_HEARTBEAT",
    "CODE_NO_MESSAGES",
    "CODE_NO_RESPONDERS",
    "CODE_TIMEOUT",
    "CODE_CONFLICT",
    "CODE_REQUEST_TIMEOUT",
    "ERR_CONSUMER_NOT_FOUND",
    "ERR_STREAM_NOT_FOUND",
    "Action",
    "Verdict",
    "classify",
]

#: ``100 Idle Heartbeat`` (or flow control): the pull request is alive and idle.
CODE_HEARTBEAT: Final = 100
#: ``400 Bad Request``: our request is malformed (e.g. heartbeat above expires/2).
CODE_BAD_REQUEST: Final = 400
#: ``404 No Messages``: a no_wait request found nothing.
CODE_NO_MESSAGES: Final = 404
#: ``408 Request Timeout``: the pull request expired (normal end of an idle request).
CODE_REQUEST_TIMEOUT: Final = 408
#: ``409 ...``: consumer deleted, leadership change, or a request limit exceeded.
CODE_CONFLICT: Final = 409
#: ``503``: no responders - stream/consumer missing or leaderless, or JetStream off.
CODE_NO_RESPONDERS: Final = 503
#: Synthetic: an API request got no answer in time.
CODE_TIMEOUT: Final = 0
#: Synthetic: the NATS connection is closed for good.
CODE_CLOSED: Final = -1

#: nats-server error code: consumer not found.
ERR_CONSUMER_NOT_FOUND: Final = 10014
#: nats-server error code: stream not found.
ERR_STREAM_NOT_FOUND: Final = 10059


class Action(StrEnum):
    """What the pull loop does next."""

    #: A heartbeat: the request is alive; reset the watchdog.
    ACTIVITY = "activity"
    #: One pull request ended (expired, no messages, a request limit): subtract its pending counts.
    PULL_ENDED = "pull_ended"
    #: Outstanding requests are gone (leadership change): forget pending counts and pull again.
    REPULL = "repull"
    #: Consumer/stream missing or leaderless: back off with jitter, verify, re-create, pull again.
    RECOVER = "recover"
    #: Nothing a retry can fix (bad request, push consumer, connection closed): log, mark not ready.
    FAIL = "fail"


class Verdict(NamedTuple):
    """A classification: the action, whether it is terminal, and a short reason for logs/metrics."""

    action: Action
    terminal: bool
    reason: str


def classify(code: int, err_code: int = 0, description: str = "") -> Verdict:
    """Classify a pull status or an API error.

    Parameters:
      code(int): Status/HTTP-like code (100, 400, 404, 408, 409, 503, or the synthetic
        :data:`CODE_TIMEOUT` / :data:`CODE_CLOSED`).
      err_code(int): nats-server's JetStream error code from an API error, 0 if none.
      description(str): The status description; only used inside the 409 family.

    Returns:
      Verdict: what to do; ``terminal`` is True only for :attr:`Action.FAIL`.
    """
    if err_code in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
        return Verdict(Action.RECOVER, False, "consumer_not_found" if err_code == ERR_CONSUMER_NOT_FOUND
                       else "stream_not_found")
    if code == CODE_HEARTBEAT:
        return Verdict(Action.ACTIVITY, False, "heartbeat")
    if code in (CODE_NO_MESSAGES, CODE_REQUEST_TIMEOUT):
        return Verdict(Action.PULL_ENDED, False, "request_expired" if code == CODE_REQUEST_TIMEOUT else "no_messages")
    if code == CODE_CONFLICT:
        text = description.lower()
        if "consumer deleted" in text:
            return Verdict(Action.RECOVER, False, "consumer_deleted")
        if "leadership change" in text:
            return Verdict(Action.REPULL, False, "leadership_change")
        if "push based" in text:
            return Verdict(Action.FAIL, True, "push_consumer")
        # Exceeded MaxWaiting / MaxRequestBatch / MaxRequestExpires / MaxBytes, Batch Completed:
        # that request is over; the next one is computed afresh.
        return Verdict(Action.PULL_ENDED, False, "request_limit")
    if code in (CODE_NO_RESPONDERS, CODE_TIMEOUT):
        return Verdict(Action.RECOVER, False, "no_responders" if code == CODE_NO_RESPONDERS else "api_timeout")
    if code == CODE_CLOSED:
        return Verdict(Action.FAIL, True, "connection_closed")
    if code == CODE_BAD_REQUEST:
        return Verdict(Action.FAIL, True, "bad_request")
    if 500 <= code < 600:
        return Verdict(Action.RECOVER, False, f"server_error_{code}")
    return Verdict(Action.FAIL, True, f"status_{code}")
