"""Create, update or verify the JetStream streams and durable pull consumers the settings declare.

``provision: auto`` creates what is missing and updates what differs; ``provision: verify``
only compares and refuses to start, naming every differing field. In both modes the config
the server *returns* is compared with the wanted one afterwards: nats-server < 2.10 silently
drops ``filter_subjects``, and a stream's ``consumer_limits`` can give a durable an
``inactive_threshold`` that would delete it when idle; and nats-py's ``pull_subscribe`` would bind
an existing durable as it is, ignoring the config it is given
(docs/nats-pitfalls.md#the-deployed-consumer-is-not-what-the-code-asks-for).

Pull consumers never get a consumer-level ``idle_heartbeat`` (the server rejects it, 10088):
the heartbeat travels in each pull request (:mod:`bridge.pull`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from bridge.advisory_assets import advisory_consumer, advisory_stream
from bridge.errors import (
    ConfigMismatch,
    ConsumerMissing,
    JetStreamRefused,
    ProvisionRefused,
    StreamMissing,
)
from bridge.jsapi import JetStreamApi
from bridge.status import ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND
from runtime import log_event
from settings import Consumer, JetStream, Stream, format_duration

__all__ = ["Provisioner", "consumer_config", "diff_consumer", "diff_stream", "stream_config"]

log = logging.getLogger("bridge.provision")

#: Nanoseconds per second: the JetStream API speaks durations in ns.
NS: Final = 1_000_000_000


def _ns(seconds: float) -> int:
    return round(seconds * NS)


def _dur(ns: Any) -> str:
    return format_duration(int(ns or 0) / NS) if ns else "0s"


def stream_config(stream: Stream) -> dict[str, Any]:
    """The wire config of ``stream`` (durations in ns)."""
    return {
        "name": stream.name,
        "subjects": list(stream.subjects),
        "storage": stream.storage,
        "retention": stream.retention,
        "num_replicas": stream.replicas,
        "max_age": _ns(stream.max_age),
        "max_bytes": stream.max_bytes,
        "max_msg_size": stream.max_msg_size,
        "duplicate_window": _ns(stream.duplicate_window),
        "discard": "old",
    }


def consumer_config(consumer: Consumer) -> dict[str, Any]:
    """The wire config of a durable pull consumer (no ``idle_heartbeat``, no ``inactive_threshold``)."""
    config: dict[str, Any] = {
        "durable_name": consumer.durable,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "replay_policy": "instant",
        "ack_wait": _ns(consumer.ack_wait),
        "max_deliver": consumer.max_deliver if consumer.max_deliver != 0 else -1,
        "max_ack_pending": consumer.max_ack_pending,
    }
    if consumer.backoff:
        config["backoff"] = [_ns(b) for b in consumer.backoff]
    if consumer.filter_subjects:
        config["filter_subjects"] = list(consumer.filter_subjects)
    return config


def _filters(config: dict[str, Any]) -> list[str]:
    filters = list(config.get("filter_subjects") or [])
    if config.get("filter_subject"):
        filters.append(config["filter_subject"])
    return sorted(filters)


def _compare(rows: list[tuple[str, Any, Any, Callable[[Any], str]]]) -> list[str]:
    return [f"{name}: server {fmt(have)}, settings {fmt(want)}" for name, have, want, fmt in rows if have != want]


def diff_stream(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """Every field of stream config ``have`` (from the server) that differs from ``want``, one line each."""
    return _compare([
        ("subjects", sorted(have.get("subjects") or []), sorted(want["subjects"]), str),
        ("storage", have.get("storage"), want["storage"], str),
        ("retention", have.get("retention"), want["retention"], str),
        ("replicas", have.get("num_replicas", 1), want["num_replicas"], str),
        ("max_age", have.get("max_age", 0), want["max_age"], _dur),
        ("max_bytes", have.get("max_bytes", -1), want["max_bytes"], str),
        ("max_msg_size", have.get("max_msg_size", -1), want["max_msg_size"], str),
        ("duplicate_window", have.get("duplicate_window", 0), want["duplicate_window"], _dur),
    ])


def diff_consumer(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """Every field of consumer config ``have`` (from the server) that differs from ``want``, one line each.

    With a ``backoff`` schedule the server replaces ``ack_wait`` by ``backoff[0]``, so that is
    what is expected then.
    """
    want_ack_wait = want["backoff"][0] if want.get("backoff") else want["ack_wait"]
    have_max_deliver = have.get("max_deliver", -1)
    return _compare([
        ("push consumer (deliver_subject)", have.get("deliver_subject"), None, str),
        ("ack_policy", have.get("ack_policy"), want["ack_policy"], str),
        ("deliver_policy", have.get("deliver_policy"), want["deliver_policy"], str),
        ("ack_wait", have.get("ack_wait"), want_ack_wait, _dur),
        ("max_deliver", -1 if have_max_deliver == 0 else have_max_deliver, want["max_deliver"], str),
        ("backoff", have.get("backoff") or [], want.get("backoff") or [],
         lambda v: "[" + ", ".join(_dur(x) for x in v) + "]"),
        ("max_ack_pending", have.get("max_ack_pending"), want["max_ack_pending"], str),
        ("filter_subjects", _filters(have), _filters(want), str),
        ("inactive_threshold", have.get("inactive_threshold", 0) or 0, 0, _dur),
        ("idle_heartbeat (consumer-level, push only)", have.get("idle_heartbeat", 0) or 0, 0, _dur),
    ])


class Provisioner:
    """Brings the server's streams and consumers to the settings (auto) or checks them (verify).

    Parameters:
      api(JetStreamApi): The API client.
      settings(JetStream): The ``jetstream`` section.
    """

    def __init__(self, api: JetStreamApi, settings: JetStream) -> None:
        self._api = api
        self._settings = settings
        #: The event streams and durables, then (unless disabled) the give-ups' own pair.
        stream, consumer = advisory_stream(settings), advisory_consumer(settings)
        self.streams = [*settings.streams, *([stream] if stream else [])]
        self.consumers = [*settings.consumers, *([consumer] if consumer else [])]
        self.advisories = consumer
        self._streams = {s.name: s for s in self.streams}

    @property
    def auto(self) -> bool:
        """True with ``provision: auto``."""
        return self._settings.provision == "auto"

    async def prepare(self) -> None:
        """Provision (auto) or verify every stream and consumer; called once at start.

        Raises:
          ProvisionRefused: verify mode found a difference or a missing stream/consumer (every
            problem is listed), or the server did not keep what auto mode asked for.
          JetStreamError: JetStream could not be reached.
        """
        problems: list[str] = []
        for stream in self.streams:
            try:
                await self.ensure_stream(stream)
            except (StreamMissing, ConfigMismatch) as exc:
                problems.append(str(exc))
        for consumer in self.consumers:
            try:
                await self.ensure_consumer(consumer, create=self.auto)
            except (ConsumerMissing, ConfigMismatch, StreamMissing) as exc:
                problems.append(str(exc))
        if problems:
            hint = ("fix the server or set jetstream.provision: auto" if not self.auto
                    else "the server did not keep the settings (nats-server >= 2.10 is needed for filter_subjects)")
            raise ProvisionRefused(f"JetStream is not as the settings describe (provision: "
                                   f"{self._settings.provision}): " + " | ".join(problems) + f" -- {hint}")

    async def ensure_stream(self, stream: Stream) -> None:
        """Create/update (auto) or verify one stream.

        Raises:
          StreamMissing: verify mode, and the stream does not exist.
          ConfigMismatch: verify mode and the config differs, or auto mode and the server did not keep it.
        """
        want = stream_config(stream)
        try:
            have = (await self._api.stream_info(stream.name))["config"]
        except JetStreamRefused as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            if not self.auto:
                raise StreamMissing(f"stream {stream.name} does not exist") from None
            have = (await self._api.stream_create(want))["config"]
            log_event(log, "stream_created", stream=stream.name, subjects=",".join(stream.subjects))
        differences = diff_stream(want, have)
        if differences and self.auto:
            log_event(log, "stream_updated", stream=stream.name, changes="; ".join(differences))
            have = (await self._api.stream_update(want))["config"]
            differences = diff_stream(want, have)
        if differences:
            raise ConfigMismatch(f"stream {stream.name}", differences)

    async def ensure_consumer(self, consumer: Consumer, *, create: bool) -> dict[str, Any]:
        """Create/update or verify one durable pull consumer; return its ``CONSUMER.INFO``.

        Parameters:
          consumer(Consumer): The consumer's settings.
          create(bool): Create it when missing and update it when it differs (auto mode, and
            re-creation of a consumer deleted while running).

        Raises:
          StreamMissing: its stream does not exist (and is not created here).
          ConsumerMissing: it does not exist and ``create`` is False.
          ConfigMismatch: it differs and ``create`` is False, or the server did not keep the config.
        """
        want = consumer_config(consumer)
        what = f"consumer {consumer.stream}/{consumer.durable}"
        try:
            info = await self._api.consumer_info(consumer.stream, consumer.durable)
        except JetStreamRefused as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise StreamMissing(f"stream {consumer.stream} of {what} does not exist") from None
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            if not create:
                raise ConsumerMissing(f"{what} does not exist") from None
            info = await self._api.consumer_create(consumer.stream, want)
            log_event(log, "consumer_created", stream=consumer.stream, consumer=consumer.durable)
        differences = diff_consumer(want, info["config"])
        if differences and create:
            log_event(log, "consumer_updated", stream=consumer.stream, consumer=consumer.durable,
                      changes="; ".join(differences))
            info = await self._api.consumer_create(consumer.stream, want)
            differences = diff_consumer(want, info["config"])
        if differences:
            raise ConfigMismatch(what, differences)
        return info

    async def recover_consumer(self, consumer: Consumer) -> dict[str, Any]:
        """Make sure ``consumer`` exists while running: re-create it (and, in auto mode, its stream).

        A consumer deleted under a running bridge is re-created from the settings in both modes:
        in verify mode those settings were checked equal to it at start.

        Raises:
          StreamMissing: the stream is gone and ``provision: verify`` forbids creating it.
          ConfigMismatch, JetStreamError: as :meth:`ensure_consumer`.
        """
        try:
            return await self.ensure_consumer(consumer, create=True)
        except StreamMissing:
            stream = self._streams.get(consumer.stream)
            if stream is None or not self.auto:
                raise
            await self.ensure_stream(stream)
            return await self.ensure_consumer(consumer, create=True)
