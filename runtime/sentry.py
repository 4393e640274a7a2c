"""Sentry for every process - bridge, worker, gateway: one set-up, one scrubber.

:func:`init_sentry` takes the ``sentry`` settings and the process role. Nothing is sent without
``sentry.dsn``. Each event and transaction is tagged ``role`` (``bridge``/``worker``/``gateway``)
and carries ``release``, ``environment`` and the host as ``server_name``. Integrations per role:

* bridge: dramatiq (its broker middleware stamps the batch's trace into every job);
* worker: dramatiq (one transaction per job; ``workers.sentry`` tags jobs and keeps retried
  attempts quiet);
* gateway: aiohttp (one issue per request whose handler raised, one transaction per request).
  ``/events`` streams and the probes are never traced: a stream lives for hours, and a
  transaction that long would time nothing useful while holding up to 1,000 spans in memory.
  Errors inside a stream are still reported. A deliberate 5xx other than 500 (503 "presence store
  unavailable") is an expected state of a Redis outage, logged already, so it is not an issue.

Everywhere, records logged at ERROR become issues (with their traceback when there is one),
lower levels breadcrumbs. sentry-sdk's asyncio integration is deliberately not used: it reports
every exception that leaves a task even when the awaiting code handles it (each refused NATS
reconnect inside ``asyncio.wait_for`` became an issue). A task that dies unobserved is still
reported, through asyncio's own "Task exception was never retrieved" ERROR record.

What leaves the process (:class:`Scrubber`, run on every error and transaction):

* never, whatever ``send_default_pii`` says: credentials - ``access_token=`` values, bearer tokens,
  anything shaped like a JWT, ``Authorization``/``Cookie`` headers, values under keys that name a
  token, password, secret or DSN, passwords in URLs. A token is a credential, not personal data;
* unless ``send_default_pii`` is on: anything that may hold a payload (chat content) or a user's
  address - frame local variables, request bodies, cookies and client addresses, dramatiq
  message arguments and stored tracebacks, the text of exceptions other than our own and
  infrastructure errors (connection, timeout, Redis, NATS, PostgreSQL), log messages of other
  libraries' loggers, and free-text fields of log records and breadcrumbs (a dead letter's
  ``reason`` may quote a field of the payload). Kept: exception types and stack traces, our own
  log messages (event names), ids, counts and names (subject, stream, consumer, queue, ...).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

import sentry_sdk
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.types import Event, Hint

from settings import Sentry, redact_urls_in

__all__ = [
    "FILTERED",
    "ROLES",
    "UNTRACED_PATHS",
    "Role",
    "Scrubber",
    "init_sentry",
    "traces_sampler",
]

Role = Literal["bridge", "worker", "gateway"]
ROLES: Final[tuple[Role, ...]] = ("bridge", "worker", "gateway")

#: What replaces a value that must not leave the process.
FILTERED: Final = "[Filtered]"

#: HTTP paths never traced: SSE streams (hours long) and probes (every few seconds).
UNTRACED_PATHS: Final = frozenset({"/events", "/healthz", "/readyz", "/metrics"})

#: Loggers whose records are not reported, per role. dramatiq logs every failed attempt at ERROR,
#: with the message (chat content) in the text: the dramatiq integration reports the final one.
_IGNORED_LOGGERS: Final[dict[Role, tuple[str, ...]]] = {"worker": ("dramatiq.worker.WorkerThread",)}

#: Our packages: their exception texts and log messages never quote a payload (ids and names only).
#: ``events`` is not one of them: a rejected event's reason may quote a value of the payload.
_OWN_PACKAGES: Final = ("bridge", "workers", "gateway", "settings", "fechatter_notify")
#: Exceptions of other packages whose text describes the infrastructure (a refused connection, a
#: timeout), never data: a package (None: all its exceptions) or some of its exception types. Not
#: all of dramatiq's (its DecodeError quotes the whole message) nor psycopg's (an IntegrityError's
#: DETAIL quotes the row).
_INFRASTRUCTURE: Final[dict[str, frozenset[str] | None]] = {
    "redis": None,
    "nats": None,
    "asyncio": None,
    "psycopg": frozenset({"OperationalError", "InterfaceError", "ConnectionTimeout", "CancellationTimeout"}),
    "psycopg_pool": frozenset({"PoolTimeout", "PoolClosed", "TooManyRequests"}),
    "dramatiq": frozenset({"TimeLimitExceeded", "RateLimitExceeded", "ActorNotFound", "QueueNotFound",
                           "ConnectionFailed", "ConnectionClosed", "QueueJoinTimeout"}),
    "aiohttp": frozenset({"ClientConnectionError", "ClientConnectorError", "ClientOSError",
                          "ServerDisconnectedError", "ServerTimeoutError", "ConnectionTimeoutError"}),
}
#: Built-in exceptions whose text is about the system, never about a value.
_SYSTEM_ERRORS: Final = frozenset({
    "OSError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
    "BrokenPipeError", "TimeoutError", "MemoryError", "RecursionError", "SystemExit", "KeyboardInterrupt",
})
#: Fields of log records (``extra``) and breadcrumbs whose text is kept: ids and names, never content.
#: Numbers and booleans are kept under any name.
_SAFE_FIELDS: Final = frozenset({
    "actor", "applied", "attempt", "broker_id", "chat_id", "code", "consumer", "consumers", "count",
    "delivered", "event_id", "exitcodes", "fields", "health_port", "host", "job_type", "likely_cause",
    "message_id", "metrics_port", "namespace", "new_pids", "old_pids", "path", "pids", "port", "processes",
    "queue", "queues", "seq", "server", "signal", "status", "stream", "stream_seq", "subject", "sys.argv",
    "threads", "user_id", "verdict",
})

#: Key names whose values are credentials (compared lower-case, ``-`` as ``_``, as substrings).
_CREDENTIAL_KEYS: Final = ("token", "authorization", "cookie", "password", "passwd", "secret", "dsn", "api_key")
_QUERY_TOKEN: Final = re.compile(r"((?:access_)?token=)[^&\s\"'#]*", re.IGNORECASE)
_BEARER: Final = re.compile(r"(bearer\s+)[^\s\"',;]+", re.IGNORECASE)
#: A JWT, whole or cut short (a truncated repr): base64url of a JSON header (always ``{"`` ->
#: ``eyJ``), then the payload and signature segments, if any.
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)*")


def init_sentry(config: Sentry, role: Role) -> bool:
    """Initialise sentry-sdk for ``role`` when ``config.dsn`` is set; returns whether Sentry is on.

    A worker or bridge must call it before building its dramatiq broker: the dramatiq integration
    adds its middleware from inside ``Broker.__init__``.
    """
    if config.dsn is None:
        return False
    pii = config.send_default_pii
    scrubber = Scrubber(role, send_default_pii=pii)
    with warnings.catch_warnings():
        # sentry-sdk 2.7x deprecates send_default_pii for data_collection, which the 2.4x releases
        # we support do not have; the scrubber, not the SDK's defaults, decides what leaves anyway.
        warnings.filterwarnings("ignore", message=".*send_default_pii.*", category=DeprecationWarning)
        sentry_sdk.init(
            dsn=config.dsn.get_secret_value(),
            environment=config.environment,
            release=config.release,
            traces_sample_rate=config.traces_sample_rate,
            traces_sampler=traces_sampler(config.traces_sample_rate),
            send_default_pii=pii,
            # Frame locals hold the events and jobs being handled, chat content included.
            include_local_variables=pii,
            integrations=_integrations(role),
            before_send=scrubber,
            before_send_transaction=scrubber,
        )
    for name in _IGNORED_LOGGERS.get(role, ()):
        ignore_logger(name)
    return True


def _integrations(role: Role) -> list[Integration]:
    # aiohttp is auto-enabled wherever it is installed (the health and metrics servers use it):
    # configure it the same way in every process.
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    integrations: list[Integration] = [AioHttpIntegration(failed_request_status_codes={500})]
    if role in ("bridge", "worker"):
        from sentry_sdk.integrations.dramatiq import DramatiqIntegration

        integrations.append(DramatiqIntegration())
    return integrations


def traces_sampler(rate: float) -> Callable[[dict[str, Any]], float]:
    """Sample at ``rate``, follow an upstream decision, never trace :data:`UNTRACED_PATHS`."""

    def sample(context: dict[str, Any]) -> float:
        request = context.get("aiohttp_request")
        if request is not None and getattr(request, "path", None) in UNTRACED_PATHS:
            return 0.0
        parent = context.get("parent_sampled")
        if parent is not None:
            return 1.0 if parent else 0.0
        return rate

    return sample


class Scrubber:
    """``before_send`` and ``before_send_transaction``: tags the role, removes what must not leave.

    Runs on the serialised event (plain dicts, lists and strings). See the module docstring.
    """

    def __init__(self, role: Role, *, send_default_pii: bool) -> None:
        self.role = role
        self.send_default_pii = send_default_pii

    def __call__(self, event: Event, hint: Hint) -> Event:
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        tags["role"] = self.role
        if not self.send_default_pii:
            _strip_payloads(event)
        _redact_credentials(event)
        return event


# -- payloads (unless send_default_pii) ----------------------------------------------------------


def _strip_payloads(event: Event) -> None:
    for frame in _frames(event):
        frame.pop("vars", None)
    for value in _values(event.get("exception")):
        if "value" in value and not _text_is_safe(value.get("module"), value.get("type")):
            value["value"] = FILTERED
    _strip_log_entry(event)
    extra = event.get("extra")
    if isinstance(extra, dict):
        event["extra"] = _safe_fields(extra)
    for crumb in _values(event.get("breadcrumbs")):
        _strip_breadcrumb(crumb)
    _strip_request(event)
    event.pop("user", None)
    _strip_dramatiq(event)


def _frames(event: Event) -> Iterator[dict[str, Any]]:
    stacks: list[Any] = [event.get("stacktrace")]
    for holder in (event.get("exception"), event.get("threads")):
        stacks.extend(value.get("stacktrace") for value in _values(holder))
    for stack in stacks:
        if isinstance(stack, dict):
            yield from (f for f in stack.get("frames") or () if isinstance(f, dict))


def _values(holder: Any) -> Iterator[dict[str, Any]]:
    """The dict items of ``holder["values"]`` (Sentry's list interfaces), or of a plain list."""
    items = holder.get("values") if isinstance(holder, dict) else holder
    if isinstance(items, list):
        yield from (item for item in items if isinstance(item, dict))


def _text_is_safe(module: Any, type_name: Any) -> bool:
    """Whether the text of an exception of this type may be sent (it never quotes a payload)."""
    if not isinstance(module, str) or module in ("builtins", "__builtin__"):
        return type_name in _SYSTEM_ERRORS
    package = module.partition(".")[0]
    if package in _OWN_PACKAGES:
        return True
    if package not in _INFRASTRUCTURE:
        return False
    types = _INFRASTRUCTURE[package]
    return types is None or type_name in types


def _is_own_logger(name: Any) -> bool:
    return isinstance(name, str) and name.partition(".")[0] in _OWN_PACKAGES


def _strip_log_entry(event: Event) -> None:
    entry = event.get("logentry")
    if not isinstance(entry, dict) or _is_own_logger(event.get("logger")):
        return
    for key in ("message", "formatted"):
        if key in entry:
            entry[key] = FILTERED
    entry.pop("params", None)


def _safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value if _field_is_safe(key, value) else FILTERED for key, value in fields.items()}


def _field_is_safe(key: str, value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return key in _SAFE_FIELDS and isinstance(value, str | list)


def _strip_breadcrumb(crumb: dict[str, Any]) -> None:
    data = crumb.get("data")
    if isinstance(data, dict):
        crumb["data"] = _safe_fields(data)
    if crumb.get("type") == "log" and not _is_own_logger(crumb.get("category")) and "message" in crumb:
        crumb["message"] = FILTERED


def _strip_request(event: Event) -> None:
    request = event.get("request")
    if not isinstance(request, dict):
        return
    for key in ("data", "cookies", "env"):
        request.pop(key, None)
    headers = request.get("headers")
    if isinstance(headers, dict):
        for name in list(headers):
            if name.lower() in ("x-forwarded-for", "x-real-ip", "forwarded"):
                headers[name] = FILTERED


def _strip_dramatiq(event: Event) -> None:
    data = event.get("contexts", {}).get("dramatiq", {}).get("data")
    if not isinstance(data, dict):
        return
    for field in ("args", "kwargs"):
        if field in data:
            data[field] = FILTERED
    options = data.get("options")
    if isinstance(options, dict) and "traceback" in options:
        # dramatiq's Retries keeps the formatted traceback (exception texts included) in the message.
        options["traceback"] = FILTERED


# -- credentials (always) ------------------------------------------------------------------------


def _redact_credentials(node: Any) -> Any:
    """``node`` with every credential replaced (dicts and lists are changed in place)."""
    if isinstance(node, str):
        return _redact_text(node)
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = FILTERED if _is_credential_key(key) and value else _redact_credentials(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            node[index] = _redact_credentials(value)
    return node


def _is_credential_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return any(word in name for word in _CREDENTIAL_KEYS)


def _redact_text(text: str) -> str:
    if "://" in text:  # a connection URL in an error message: its password
        text = redact_urls_in(text)
    if "=" in text or " " in text or "eyJ" in text:
        text = _QUERY_TOKEN.sub(rf"\1{FILTERED}", text)
        text = _BEARER.sub(rf"\1{FILTERED}", text)
        text = _JWT.sub(FILTERED, text)
    return text
