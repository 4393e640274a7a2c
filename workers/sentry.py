"""Sentry for the workers: one issue per job that finally failed, tagged with the job's ids.

The set-up and the scrubbing (no chat content unless ``sentry.send_default_pii``) are
:mod:`runtime.sentry`'s; its :func:`~runtime.sentry.init_sentry` must run before the
broker is built: sentry-sdk's ``DramatiqIntegration`` adds its middleware from inside
``Broker.__init__``, so a broker built earlier has none
(docs/dramatiq-pitfalls.md#sentrys-dramatiq-integration). That middleware captures *every* failed attempt;
:class:`SentryTags` fixes that and tags the events:

* each event is tagged with the job type, chat, event id and stream sequence;
* an attempt that :class:`~dramatiq.middleware.Retries` will retry is not reported; only the
  attempt after which the job is dead-lettered is (permanent failures: the first).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import sentry_sdk
from dramatiq.middleware import Middleware
from sentry_sdk.types import Event, Hint

__all__ = ["SentryTags", "job_tags"]


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
