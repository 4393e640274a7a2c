"""Named rules across fields: the timing and subject rules behind the two production errors.

"missed idle heartbeat": pull requests, heartbeats, pings and ack waits that don't fit.
"no responders": subjects, streams and consumers that don't line up.
Each rule returns problem records; none raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from settings.durations import format_duration as fmt
from settings.model import Settings
from settings.problems import Path, Problem, problem_at
from settings.sources import Origins
from settings.subjects import subject_problem, subject_within, subjects_overlap
from settings.url_checks import URL_CHECKS

Check = Callable[[Settings, Origins], Iterator[Problem]]

#: A fetched batch may take one Redis timeout and one retry before it is acked.
ENQUEUE_ATTEMPTS = 2
#: Extra room between the worst enqueue and ack_wait, in seconds.
ACK_MARGIN_S = 1.0


def heartbeat_above_ping(s: Settings, o: Origins) -> Iterator[Problem]:
    """The seed's rule: a consumer's idle_heartbeat must exceed the connection ping_interval.

    Fechatter's own fix for its notify server's "missed idle heartbeat" set this rule
    (docs/nats-pitfalls.md#the-seeds-heartbeat-rule); the diagnosis does not hold, but files are
    written to it, so it is still checked.
    """
    ping = s.nats.ping_interval
    beats: list[tuple[Path, float]] = [
        (("jetstream", "consumers", i, "idle_heartbeat"), c.idle_heartbeat)
        for i, c in enumerate(s.jetstream.consumers)
    ]
    if s.realtime.idle_heartbeat is not None:
        beats.append((("realtime", "idle_heartbeat"), s.realtime.idle_heartbeat))
    for path, beat in beats:
        if beat <= ping:
            yield problem_at(
                o, path, "heartbeat_not_above_ping",
                f"idle_heartbeat {fmt(beat)} is not greater than nats.ping_interval {fmt(ping)}: a link "
                "the pings have not yet found dead shows up first as 'missed idle heartbeat'",
                fmt(beat), f"idle_heartbeat: {fmt(ping * 1.5)} (or lower nats.ping_interval)")


def heartbeat_within_half_expiry(s: Settings, o: Origins) -> Iterator[Problem]:
    """nats-server rejects a pull whose heartbeat exceeds half its expiry ("heartbeat value too large")."""
    for i, c in enumerate(s.jetstream.consumers):
        if c.expires is not None and c.idle_heartbeat * 2 > c.expires:
            yield problem_at(
                o, ("jetstream", "consumers", i, "expires"), "heartbeat_above_half_expiry",
                f"each pull request's idle_heartbeat {fmt(c.idle_heartbeat)} must be at most half its "
                f"expiry {fmt(c.expires)}; nats-server answers 400 'heartbeat value too large'",
                fmt(c.expires), f"expires: {fmt(2 * c.idle_heartbeat)} or more, or leave expires unset")


def ack_wait_covers_enqueue(s: Settings, o: Origins) -> Iterator[Problem]:
    """A fetched batch must be enqueued and acked before ack_wait, or it is redelivered meanwhile."""
    worst = ENQUEUE_ATTEMPTS * s.redis.socket_timeout + ACK_MARGIN_S
    for i, c in enumerate(s.jetstream.consumers):
        first = c.backoff[0] if c.backoff else c.ack_wait  # backoff[0] overrides ack_wait
        if first <= worst:
            yield problem_at(
                o, ("jetstream", "consumers", i, "ack_wait"), "ack_wait_too_short",
                f"ack_wait {fmt(first)} does not cover a batch's enqueue: {ENQUEUE_ATTEMPTS} x "
                f"redis.socket_timeout {fmt(s.redis.socket_timeout)} + {fmt(ACK_MARGIN_S)} margin = "
                f"{fmt(worst)}; messages would be redelivered while still being enqueued",
                fmt(first), f"ack_wait: {fmt(worst * 2)} or lower redis.socket_timeout")


def backoff_within_max_deliver(s: Settings, o: Origins) -> Iterator[Problem]:
    """nats-server rejects a backoff list longer than max_deliver."""
    for i, c in enumerate(s.jetstream.consumers):
        if c.backoff and c.max_deliver != -1 and len(c.backoff) > c.max_deliver:
            yield problem_at(
                o, ("jetstream", "consumers", i, "backoff"), "backoff_longer_than_max_deliver",
                f"{len(c.backoff)} backoff steps but max_deliver is {c.max_deliver}",
                [fmt(b) for b in c.backoff], f"at most {c.max_deliver} steps, or raise max_deliver")


def dedupe_window_covers_redelivery(s: Settings, o: Origins) -> Iterator[Problem]:
    """The enqueue dedupe marker must outlive every redelivery of one event."""
    for c in s.jetstream.consumers:
        tries = c.max_deliver if c.max_deliver > 0 else None
        span = (sum(c.backoff) + c.ack_wait * max(0, (tries or 0) - len(c.backoff))) if tries else None
        if span is not None and s.redis.dedupe_window < span:
            yield problem_at(
                o, ("redis", "dedupe_window"), "dedupe_window_too_short",
                f"consumer {c.durable!r} may redeliver for {fmt(span)}, longer than the dedupe window",
                fmt(s.redis.dedupe_window), f"dedupe_window: {fmt(span * 2)}")


def subjects_are_valid(s: Settings, o: Origins) -> Iterator[Problem]:
    """Every subject is a valid NATS subject."""
    lists: list[tuple[Path, list[str]]] = [(("realtime", "subjects"), s.realtime.subjects)]
    lists += [(("jetstream", "streams", i, "subjects"), st.subjects) for i, st in enumerate(s.jetstream.streams)]
    lists += [(("jetstream", "consumers", i, "filter_subjects"), c.filter_subjects)
              for i, c in enumerate(s.jetstream.consumers)]
    for path, subjects in lists:
        for j, subject in enumerate(subjects):
            why = subject_problem(subject)
            if why:
                yield problem_at(o, (*path, j), "invalid_subject", why, subject,
                               "tokens separated by single dots; '*' a whole token; '>' only last")


def names_are_valid(s: Settings, o: Origins) -> Iterator[Problem]:
    """Stream and durable names may not hold '.', '*', '>' or whitespace (they are subject tokens)."""
    named: list[tuple[Path, str]] = [
        (("jetstream", "streams", i, "name"), st.name) for i, st in enumerate(s.jetstream.streams)
    ]
    named += [(("jetstream", "consumers", i, "durable"), c.durable) for i, c in enumerate(s.jetstream.consumers)]
    if s.jetstream.advisories.stream:
        named += [(("jetstream", "advisories", "stream"), s.jetstream.advisories.stream),
                  (("jetstream", "advisories", "durable"), s.jetstream.advisories.durable)]
    for path, name in named:
        if not name or any(ch in name for ch in ".*> \t\r\n/\\"):
            yield problem_at(o, path, "invalid_name", "names may not be empty or contain . * > / \\ or spaces",
                           name, "use letters, digits, '-' and '_'")
    seen: dict[str, int] = {}
    for i, c in enumerate(s.jetstream.consumers):
        key = f"{c.stream}/{c.durable}"
        if key in seen:
            yield problem_at(o, ("jetstream", "consumers", i, "durable"), "duplicate_consumer",
                           f"consumer {c.durable!r} on stream {c.stream!r} is declared twice "
                           f"(also jetstream.consumers[{seen[key]}])", c.durable, "give each durable its own name")
        seen[key] = i


def advisories_stream_is_its_own(s: Settings, o: Origins) -> Iterator[Problem]:
    """The give-ups' stream is not one of the event streams (its subjects would replace theirs)."""
    name = s.jetstream.advisories.stream
    if name and name in {st.name for st in s.jetstream.streams}:
        yield problem_at(o, ("jetstream", "advisories", "stream"), "advisories_stream_is_an_event_stream",
                         f"stream {name!r} is declared in jetstream.streams: the give-ups need a stream of their own",
                         name, "stream: FECHATTER_NOTIFY_ADVISORIES (or \"\" to listen on core NATS only)")


def streams_do_not_overlap(s: Settings, o: Origins) -> Iterator[Problem]:
    """nats-server refuses a stream whose subjects overlap another stream's."""
    streams = s.jetstream.streams
    for i, a in enumerate(streams):
        for j in range(i + 1, len(streams)):
            b = streams[j]
            for x, sa in enumerate(a.subjects):
                for sb in b.subjects:
                    if subjects_overlap(sa, sb):
                        yield problem_at(o, ("jetstream", "streams", i, "subjects", x), "overlapping_streams",
                                       f"stream {a.name!r} subject {sa!r} overlaps stream {b.name!r} subject {sb!r}; "
                                       "nats-server refuses the second stream", sa,
                                       "give each stream disjoint subjects")


def consumers_fit_their_streams(s: Settings, o: Origins) -> Iterator[Problem]:
    """Each consumer names a declared stream, and each filter lies inside that stream's subjects."""
    by_name = {st.name: st for st in s.jetstream.streams}
    for i, c in enumerate(s.jetstream.consumers):
        stream = by_name.get(c.stream)
        if stream is None:
            yield problem_at(o, ("jetstream", "consumers", i, "stream"), "unknown_stream",
                           f"consumer {c.durable!r} names stream {c.stream!r}, which is not declared in "
                           f"jetstream.streams ({', '.join(map(repr, by_name)) or 'none'}); pulls would get "
                           "'no responders'", c.stream, f"stream: {next(iter(by_name), 'FECHATTER_EVENTS')}")
            continue
        for j, f in enumerate(c.filter_subjects):
            if not any(subject_within(f, sub) for sub in stream.subjects):
                yield problem_at(o, ("jetstream", "consumers", i, "filter_subjects", j), "filter_outside_stream",
                               f"filter {f!r} is not inside stream {stream.name!r} subjects {stream.subjects}; "
                               "nats-server refuses the consumer and its pulls get 'no responders'", f,
                               "narrow the filter, add the subject to the stream, or (for fechatter.realtime.>) "
                               "move it to realtime.subjects")
        filters = c.filter_subjects
        for a in range(len(filters)):
            for b in range(a + 1, len(filters)):
                if subjects_overlap(filters[a], filters[b]):
                    yield problem_at(o, ("jetstream", "consumers", i, "filter_subjects", b), "overlapping_filters",
                                   f"filters {filters[a]!r} and {filters[b]!r} overlap; nats-server refuses "
                                   "overlapping filter subjects", filters[b], "keep the wider one only")


def consumers_do_not_share_events(s: Settings, o: Origins) -> Iterator[Problem]:
    """Two consumers of one stream with overlapping filters would enqueue every shared event twice."""
    cs = s.jetstream.consumers
    for i, a in enumerate(cs):
        for j in range(i + 1, len(cs)):
            b = cs[j]
            if a.stream != b.stream:
                continue
            fa, fb = a.filter_subjects or [">"], b.filter_subjects or [">"]
            shared = [(x, y) for x in fa for y in fb if subjects_overlap(x, y)]
            if shared:
                x, y = shared[0]
                yield problem_at(o, ("jetstream", "consumers", j, "filter_subjects"), "consumers_overlap",
                               f"consumers {a.durable!r} and {b.durable!r} of stream {a.stream!r} both match "
                               f"{x!r}/{y!r}: each such event would become two jobs", b.filter_subjects,
                               "give the consumers disjoint filters (an empty list means the whole stream)")


def realtime_not_captured(s: Settings, o: Origins) -> Iterator[Problem]:
    """A core realtime subject that a stream also captures is delivered twice (core + consumer)."""
    for i, subject in enumerate(s.realtime.subjects):
        for st in s.jetstream.streams:
            hit = next((x for x in st.subjects if subjects_overlap(subject, x)), None)
            if hit:
                yield problem_at(o, ("realtime", "subjects", i), "realtime_captured_by_stream",
                               f"core subject {subject!r} is also captured by stream {st.name!r} ({hit!r}): "
                               "every such event would reach the bridge twice, and realtime events must not "
                               "be persisted", subject, "remove the overlap from the stream's subjects or from "
                               "realtime.subjects")


def stream_subjects_are_consumed(s: Settings, o: Origins) -> Iterator[Problem]:
    """A subject a stream stores but no consumer reads is stored and never delivered."""
    for i, st in enumerate(s.jetstream.streams):
        filters = [f or ">" for c in s.jetstream.consumers if c.stream == st.name for f in (c.filter_subjects or [">"])]
        for j, subject in enumerate(st.subjects):
            if not any(subjects_overlap(subject, f) for f in filters):
                yield problem_at(o, ("jetstream", "streams", i, "subjects", j), "subject_not_consumed",
                               f"stream {st.name!r} stores {subject!r} but no consumer's filter matches it: "
                               "those events are kept and never delivered", subject,
                               "add it to a consumer's filter_subjects (or leave filter_subjects empty)",
                               level="warning")


def public_key_is_ed25519(s: Settings, o: Origins) -> Iterator[Problem]:
    """The gateway's key must be an Ed25519 public key in PEM (Fechatter signs with EdDSA)."""
    pem = s.gateway.jwt.public_key
    if pem is None:
        return
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        yield problem_at(o, ("gateway", "jwt", "public_key"), "invalid_public_key",
                       f"not a PEM public key ({exc})", None, "paste the -----BEGIN PUBLIC KEY----- block")
        return
    if not isinstance(key, Ed25519PublicKey):
        yield problem_at(o, ("gateway", "jwt", "public_key"), "invalid_public_key",
                       f"a {type(key).__name__}, but Fechatter signs tokens with Ed25519", None,
                       "use the Ed25519 public key from Fechatter's auth.pk")


def backoff_cap_above_base(s: Settings, o: Origins) -> Iterator[Problem]:
    """The reconnect backoff cap cannot be below its base."""
    n = s.nats
    if n.reconnect_backoff_cap < n.reconnect_backoff_base:
        yield problem_at(o, ("nats", "reconnect_backoff_cap"), "backoff_cap_below_base",
                       f"cap {fmt(n.reconnect_backoff_cap)} is below base {fmt(n.reconnect_backoff_base)}",
                       fmt(n.reconnect_backoff_cap), "cap >= base")


def streams_replicated_on_cluster(s: Settings, o: Origins) -> Iterator[Problem]:
    """Several NATS servers are a cluster: an R1 stream there lives on one of them, and while that one is
    down the stream has no leader (publishes fail, pulls get 'no responders'), the seed's production error."""
    servers = len(s.nats.servers)
    if servers < 2:
        return
    for i, st in enumerate(s.jetstream.streams):
        if st.replicas == 1:
            yield problem_at(o, ("jetstream", "streams", i, "replicas"), "stream_r1_on_cluster",
                             f"stream {st.name!r} has 1 replica but nats.servers lists {servers} servers (a "
                             "cluster): while the one server holding it is down the stream has no leader and "
                             "every pull gets 'no responders'", st.replicas,
                             "replicas: 3 (an odd count keeps a majority through one server's loss; the "
                             "durables follow their stream)", level="warning")


#: Which process type listens on each port setting (a Procfile runs them all on one host).
PORT_OWNERS: tuple[tuple[Path, str], ...] = (
    (("health", "port"), "bridge"),
    (("metrics", "port"), "bridge"),
    (("health", "worker_port"), "worker"),
    (("metrics", "worker_port"), "worker"),
    (("gateway", "port"), "gateway"),
)


def _setting(s: Settings, path: Path) -> int:
    section = getattr(s, str(path[0]))
    return int(getattr(section, str(path[1])))


def processes_do_not_share_ports(s: Settings, o: Origins) -> Iterator[Problem]:
    """Two process types on one port: run on one host (honcho, foreman, heroku local), the second one
    to start exits with "port in use". One process may serve health and metrics on one port."""
    seen: dict[int, tuple[Path, str]] = {}
    for path, owner in PORT_OWNERS:
        port = _setting(s, path)
        if port == 0:
            continue
        first = seen.setdefault(port, (path, owner))
        if first[1] != owner:
            # Reported where the operator wrote a port: that one is the likely slip.
            at = path if path in o or first[0] not in o else first[0]
            yield problem_at(o, at, "port_shared_between_processes",
                             f"{dotted_path(first[0])} ({first[1]}) and {dotted_path(path)} ({owner}) are both "
                             f"port {port}: on one host the second to start exits with 'port in use'", port,
                             "give each process type its own port (defaults: bridge 8081/9091, worker "
                             "8082/9092, gateway $PORT or 6687)", level="warning")


def dotted_path(path: Path) -> str:
    return ".".join(str(p) for p in path)


ALL_CHECKS: tuple[Check, ...] = (
    *URL_CHECKS,
    heartbeat_above_ping,
    heartbeat_within_half_expiry,
    ack_wait_covers_enqueue,
    backoff_within_max_deliver,
    dedupe_window_covers_redelivery,
    subjects_are_valid,
    names_are_valid,
    advisories_stream_is_its_own,
    streams_do_not_overlap,
    consumers_fit_their_streams,
    consumers_do_not_share_events,
    realtime_not_captured,
    stream_subjects_are_consumed,
    public_key_is_ed25519,
    backoff_cap_above_base,
    processes_do_not_share_ports,
    streams_replicated_on_cluster,
)


def run_checks(settings: Settings, origins: Origins) -> list[Problem]:
    """Every named rule's problems, in rule order."""
    return [p for check in ALL_CHECKS for p in check(settings, origins)]
