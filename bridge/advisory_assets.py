"""The stream and durable that keep JetStream's give-ups until a bridge reads them.

JetStream announces a message it gives up on (``max_deliver`` reached) once, on the core subject
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>``; nobody listening means nobody
hears it. nats-server stores such subjects in a stream like any other, so ``jetstream.advisories``
names a stream capturing the advisory subject of every configured consumer, and a durable the
bridges share (:mod:`bridge.advisories` reads it). Work-queue retention: an advisory is gone once a
bridge has acked it, which it does after the dead letter (or the count of an already-enqueued event)
is stored.
"""

from __future__ import annotations

from settings import Consumer, JetStream, Stream

__all__ = ["advisory_consumer", "advisory_stream", "advisory_subject"]

#: Seconds a bridge has to store one advisory's dead letter before JetStream offers it again.
ADVISORY_ACK_WAIT_S = 30.0


def advisory_subject(consumer: Consumer) -> str:
    """The max-deliveries advisory subject of ``consumer``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{consumer.stream}.{consumer.durable}"


def advisory_stream(settings: JetStream) -> Stream | None:
    """The stream keeping every consumer's give-ups; None when ``advisories.stream`` is empty."""
    advisories = settings.advisories
    if not advisories.stream or not settings.consumers:
        return None
    subjects = sorted({advisory_subject(c) for c in settings.consumers})
    # As replicated as the most replicated event stream: a give-up is worth what its event was.
    replicas = max((s.replicas for s in settings.streams), default=1)
    return Stream(name=advisories.stream, subjects=subjects, retention="workqueue", replicas=replicas,
                  max_age=advisories.max_age)


def advisory_consumer(settings: JetStream) -> Consumer | None:
    """The durable the bridges read give-ups from; None when ``advisories.stream`` is empty.

    ``max_deliver`` -1: an advisory is offered again until a bridge has stored it (a Redis outage
    naks it with a delay), never given up on in turn.
    """
    advisories = settings.advisories
    if not advisories.stream or not settings.consumers:
        return None
    return Consumer(durable=advisories.durable, stream=advisories.stream, ack_wait=ADVISORY_ACK_WAIT_S,
                    max_deliver=-1, max_ack_pending=1000, batch=100, idle_heartbeat=5.0)
