"""Sentry for the workers: one issue per job that finally failed, tagged, without chat content.

:func:`init_sentry` must run before the broker is built: sentry-sdk's ``DramatiqIntegration``
adds its middleware from inside ``Broker.__init__`` (pitfalls.md §20). That middleware captures
*every* failed attempt and attaches the whole message (chat content included) to the event;
:class:`SentryTags` and the ``before_send`` hook fix both:

* each event is tagged with the job type, chat, event id and stream sequence;
* an attempt that :class:`~dramatiq.middleware.Retries` will retry is not reported; only the
  attempt after which the job is dead-lettered is (permanent failures: the first);
* unless ``sentry.send_default_pii`` is on, the message arguments and local variables (the job,
  with its ``content``) are left out of events.
"""

from __future__ import annotations

from typing import Any, Final

import dramatiq
import sentry_sdk
from dramatiq.middleware import Middleware
from sentry_sdk.integrations.dramatiq import DramatiqIntegration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.types import Event, Hint

from settings.model import Sentry

__all__ = ["FILTERED", "SentryTags", "init_sentry", "job_tags"]

#: What replaces message arguments in events when PII is off.
FILTERED: Final = "[Filtered]"


def init_sentry(config: Sentry) -> bool:
    """Initialise sentry-sdk with the dramatiq integration if a DSN is configured.

    Returns:
      Whether Sentry is on.
    """
    if config.dsn is None:
        return False
    pii = config.send_default_pii
    sentry_sdk.init(
        dsn=config.dsn.get_secret_value(),
        environment=config.environment,
        release=config.release,
        traces_sample_rate=config.traces_sample_rate,
        send_default_pii=pii,
        # Frame locals hold the decoded job, content included.
        include_local_variables=pii,
        integrations=[DramatiqIntegration()],
        before_send=_scrub if not pii else None,
    )
    # dramatiq logs every failed attempt at ERROR: left to the logging integration, each one
    # would become an issue of its own. The dramatiq integration reports the final one.
    ignore_logger("dramatiq.worker.WorkerThread")
    return True


def _scrub(event: Event, hint: Hint) -> Event:
    data = event.get("contexts", {}).get("dramatiq", {}).get("data")
    if isinstance(data, dict):
        for field in ("args", "kwargs"):
            if field in data:
                data[field] = FILTERED
    return event


def job_tags(message: dramatiq.MessageProxy | dramatiq.Message[Any]) -> dict[str, str]:
    """Sentry tags from the job in ``message``'s arguments (read raw: it may not decode)."""
    tags = {"actor": message.actor_name, "queue": message.queue_name}
    job: dict[str, Any] = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
    origin: dict[str, Any] = job["origin"] if isinstance(job.get("origin"), dict) else {}
    for tag, value in (
        ("job_type", job.get("kind")),
        ("chat_id", job.get("chat_id")),
        ("user_id", job.get("user_id")),
        ("event_id", origin.get("event_id")),
        ("stream", origin.get("stream")),
        ("stream_seq", origin.get("stream_seq")),
        ("subject", origin.get("subject")),
    ):
        if value is not None:
            tags[tag] = str(value)
    return tags


def _drop_errors(event: Event, hint: Hint) -> Event | None:
    # Transactions still go out (tracing); the error of a retried attempt does not.
    return event if event.get("type") == "transaction" else None


class SentryTags(Middleware):
    """Tags the message's Sentry scope and silences attempts that will be retried.

    It must sit below Sentry's middleware (which opens the per-message scope in
    ``before_process_message``) and above :class:`~dramatiq.middleware.Retries` (whose
    ``after_process_message``, run first, marks a dead-lettered message ``failed``).
    Tags hold ids only, never content.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not sentry_sdk.get_client().is_active():
            return
        scope = sentry_sdk.get_isolation_scope()
        for tag, value in job_tags(message).items():
            scope.set_tag(tag, value)
        scope.set_tag("attempt", str(message.options.get("retries", 0) + 1))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or message.failed or not sentry_sdk.get_client().is_active():
            return
        sentry_sdk.get_isolation_scope().add_event_processor(_drop_errors)
