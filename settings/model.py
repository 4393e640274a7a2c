"""The typed configuration: every section, every key, its default and its meaning.

Durations are ``float`` seconds (see :mod:`settings.durations`). Unknown keys are errors
(``extra="forbid"``), so a typo can never fall back to a default. Cross-field rules live
in :mod:`settings.checks`, not here, so that each one reports its own problem record.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from settings.durations import parse_duration
from settings.sizes import parse_size, parse_size_or_percent

#: The longest duration any setting accepts (10 years). Every timing here is far below it; a larger
#: value is a typo, and one past ~3e8 s would overflow the event loop's timers or JetStream's int64
#: nanoseconds at run time instead of being refused here.
MAX_DURATION_S = 10 * 365 * 24 * 3600.0
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=MAX_DURATION_S)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=MAX_DURATION_S)]
Port = Annotated[int, Field(ge=0, le=65535)]

#: Subjects Fechatter's server publishes durable domain events on: the seed's
#: ``fechatter.messages.>``/``fechatter.chats.>`` (docs/nats-pitfalls.md#the-seeds-heartbeat-rule)
#: plus the singular ``fechatter.message.>``/``fechatter.chat.>`` the server uses today, and the rest
#: of docs/event-contract.md#subjects.
DEFAULT_DOMAIN_SUBJECTS = [
    "fechatter.messages.>",
    "fechatter.chats.>",
    "fechatter.message.>",
    "fechatter.chat.>",
    "fechatter.user.>",
    "fechatter.broadcast",
]
#: Core NATS (non-persistent) realtime subjects.
DEFAULT_REALTIME_SUBJECTS = ["fechatter.realtime.>"]
#: The JetStream stream name unless the file names one.
DEFAULT_STREAM = "FECHATTER_EVENTS"
#: The durable pull consumer's name.
DEFAULT_DURABLE = "notification_processor"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TLS(Section):
    """TLS towards nats-server. Paths to PEM files."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class NatsConnection(Section):
    """How every process connects to NATS."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    name: str = "fechatter-notify"
    connect_timeout: PositiveSeconds = 10.0
    #: Client PING interval; with max_outstanding_pings it bounds stale-connection detection.
    ping_interval: PositiveSeconds = 30.0
    max_outstanding_pings: int = Field(default=2, ge=1)
    #: Reconnect delay is min(base * 2^attempt, cap) with +-jitter (fraction).
    reconnect_backoff_base: PositiveSeconds = 1.0
    reconnect_backoff_cap: PositiveSeconds = 30.0
    reconnect_jitter: float = Field(default=0.2, ge=0, le=1)
    #: -1 means never give up (Fechatter's old notify server stopped after 10 and then reported a
    #: dead process as healthy; docs/nats-pitfalls.md#connection-options).
    max_reconnects: int = Field(default=-1, ge=-1)
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: str | None = None
    nkey_seed: SecretStr | None = None
    tls: TLS = Field(default_factory=TLS)


class Stream(Section):
    """A JetStream stream that captures Fechatter's domain subjects."""

    name: str = DEFAULT_STREAM
    subjects: list[str] = Field(default_factory=lambda: list(DEFAULT_DOMAIN_SUBJECTS), min_length=1)
    storage: Literal["file", "memory"] = "file"
    retention: Literal["limits", "interest", "workqueue"] = "limits"
    replicas: int = Field(default=1, ge=1, le=5)
    max_age: Seconds = 24 * 3600.0
    #: -1 means unlimited (nats-server's own default).
    max_bytes: int = Field(default=-1, ge=-1)
    max_msg_size: int = Field(default=-1, ge=-1)
    duplicate_window: Seconds = 120.0


class Consumer(Section):
    """A durable pull consumer the bridge reads from.

    ``idle_heartbeat`` is sent in **each pull request**, never set on the consumer (nats-server
    rejects a consumer-level heartbeat on pull consumers with error 10088).
    """

    durable: str = DEFAULT_DURABLE
    stream: str = DEFAULT_STREAM
    #: Empty means the whole stream (cheapest: one filter costs nothing, two cost ~19%).
    filter_subjects: list[str] = Field(default_factory=list)
    ack_wait: PositiveSeconds = 45.0
    #: Deliveries before JetStream gives up (a ``max_deliveries`` dead letter). Parse failures are
    #: terminated at once and a Redis outage holds events with +WPI, so only a bridge that dies (or is
    #: cut off) holding a delivered batch spends deliveries: 10 lets a bridge crash-loop under a
    #: backlog several times before an event is given up on; -1 (never give up) is allowed.
    max_deliver: int = Field(default=10, ge=-1)
    #: Redelivery delays; no longer than max_deliver.
    backoff: list[PositiveSeconds] = Field(default_factory=list)
    max_ack_pending: int = Field(default=1000, ge=1)
    #: Messages asked for per pull request.
    batch: int = Field(default=100, ge=1, le=10000)
    #: Pull request expiry; unset means 2 x idle_heartbeat, the smallest value the server accepts.
    expires: PositiveSeconds | None = None
    idle_heartbeat: PositiveSeconds = 45.0
    #: Local cap on fetched-but-not-yet-acked messages in this bridge process.
    max_in_flight: int = Field(default=2000, ge=1)

    @property
    def pull_expiry(self) -> float:
        """The expiry of each pull request, in seconds."""
        return self.expires if self.expires is not None else 2 * self.idle_heartbeat


class Advisories(Section):
    """Where JetStream's give-ups wait for a bridge.

    JetStream announces each event it gives up on (``max_deliver`` reached) once, on core NATS: a
    give-up announced while no bridge is connected would leave no dead letter. A stream capturing
    each consumer's advisory subject keeps it until a bridge reads it through its own durable.
    """

    #: The stream; "" listens on core NATS only (a give-up while no bridge is connected is lost).
    stream: str = "FECHATTER_NOTIFY_ADVISORIES"
    durable: str = "fechatter_notify_advisories"
    #: How long an unread give-up is kept (the longest every bridge may be down).
    max_age: PositiveSeconds = 7 * 24 * 3600.0


class JetStream(Section):
    """Durable domain events: streams and their durable pull consumers."""

    #: auto: create or update streams/consumers; verify: refuse to start when they differ.
    provision: Literal["auto", "verify"] = "auto"
    streams: list[Stream] = Field(default_factory=lambda: [Stream()])
    consumers: list[Consumer] = Field(default_factory=lambda: [Consumer()])
    #: Misses in a row before the bridge reports itself not ready.
    max_missed_heartbeats: int = Field(default=3, ge=1)
    advisories: Advisories = Field(default_factory=Advisories)


class Realtime(Section):
    """Core NATS realtime subjects (at-most-once), shared by bridge replicas via a queue group."""

    subjects: list[str] = Field(default_factory=lambda: list(DEFAULT_REALTIME_SUBJECTS))
    queue_group: str = "fechatter-notify-bridge"
    #: Only from a Fechatter-layout file; checked against the seed's rule
    #: (docs/nats-pitfalls.md#the-seeds-heartbeat-rule), not used on core NATS.
    idle_heartbeat: PositiveSeconds | None = None
    #: How long to wait for more events before enqueueing a batch (or until ``batch_size``).
    #: 0 enqueues at once; events that arrive while an enqueue is in flight form the next
    #: batch, so batches still grow with the rate without adding latency at low rates.
    batch_window: Seconds = 0.0
    batch_size: int = Field(default=500, ge=1)
    typing_ttl: PositiveSeconds = 5.0
    presence_ttl: PositiveSeconds = 60.0
    #: Per-subscription pending limit before the client drops messages (slow consumer).
    pending_msgs_limit: int = Field(default=65536, ge=1)


class RedisTLS(Section):
    """TLS towards the Sentinel-managed Redis and its sentinels (with ``redis.url``, use ``rediss://``)."""

    enabled: bool = False
    #: PEM files: the CA that signed the servers' certificates, and a client certificate and key.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class Redis(Section):
    """The Redis that holds dramatiq's queues, dedupe markers, membership and inboxes.

    One server by ``url``, or a Sentinel-managed primary by ``sentinels`` + ``master_name`` (also
    written as a ``redis+sentinel://`` URL): every process then asks the sentinels for the primary
    and follows a failover without a restart. The ``username``..``tls`` keys apply to Sentinel mode
    only; with a plain ``url`` the URL carries them (settings.redis_target).
    """

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    #: Sentinels as ``host:port`` (port 26379 when left out); the alternative to ``url``.
    sentinels: list[str] = Field(default_factory=list)
    #: The name the sentinels monitor the primary under (their ``sentinel monitor <name> ...``).
    master_name: str | None = None
    #: Database number and credentials of the primary (Sentinel mode).
    db: int = Field(default=0, ge=0)
    username: str | None = None
    password: SecretStr | None = None
    #: Credentials of the sentinels themselves (their ``requirepass``/ACL), when they differ.
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    tls: RedisTLS = Field(default_factory=RedisTLS)
    #: Replicas that must hold a batch's enqueue (the bridge) or a job's inbox writes (the workers)
    #: before the JetStream message or the job is acked: Redis ``WAIT``. 0 acks on the primary's word.
    min_replicas_acked: int = Field(default=0, ge=0)
    #: How long ``WAIT`` may take; fewer replicas by then fails the batch or job like a Redis error.
    replica_ack_timeout: PositiveSeconds = 1.0
    namespace: str = "fechatter-notify"
    socket_timeout: PositiveSeconds = 5.0
    socket_connect_timeout: PositiveSeconds = 5.0
    #: How long a gateway request waits for a free connection of its Redis pool. Each holder gives
    #: its connection back within socket_timeout, so a reconnect storm of thousands of streams queues
    #: here rather than failing streams (their clients would only come back and queue again).
    pool_timeout: PositiveSeconds = 30.0
    #: How long an enqueued event's key blocks a second enqueue (>= ack_wait x max_deliver).
    dedupe_window: PositiveSeconds = 3600.0


class Queues(Section):
    """dramatiq queue names: realtime jobs never wait behind a burst of messages."""

    realtime: str = "realtime"
    domain: str = "domain"


class DeadLetters(Section):
    """Where the bridge stores payloads it cannot turn into jobs."""

    #: A Redis stream (under the namespace) holding subject, headers, raw bytes and the reason.
    stream: str = "dead-letters"
    max_len: int = Field(default=100_000, ge=1)


class Events(Section):
    """Limits the bridge applies to every event before decoding it."""

    #: A payload larger than this (bytes) becomes a ``payload_too_large`` dead letter
    #: without being decoded. A real event is chat text plus file URLs (files travel
    #: separately) and a few ids: a few KiB. 256 KiB leaves long messages ample room while one
    #: oversized event can no longer be copied whole into every member's inbox. At least
    #: 1 KiB (a smaller limit would refuse ordinary events), at most NATS's own 64 MiB ceiling.
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)


class Delivery(Section):
    """Per-user inboxes the workers write and the gateway reads."""

    inbox_max_len: int = Field(default=1000, ge=1)
    inbox_max_age: PositiveSeconds = 7 * 24 * 3600.0
    #: How long (chat_id, message_id) -> user dedupe markers live.
    dedupe_ttl: PositiveSeconds = 7 * 24 * 3600.0
    membership_ttl: PositiveSeconds = 24 * 3600.0
    max_retries: int = Field(default=5, ge=0)
    min_backoff: PositiveSeconds = 0.1
    max_backoff: PositiveSeconds = 30.0
    time_limit: PositiveSeconds = 60.0


class Sentry(Section):
    """Error reporting and traces of every process (see ``runtime.sentry``).

    Nothing is sent unless ``dsn`` is set. ``send_default_pii`` lets payloads (chat content),
    local variables and client addresses into events; access tokens are never sent.
    """

    dsn: SecretStr | None = None
    environment: str = "production"
    release: str | None = None
    traces_sample_rate: float = Field(default=0.0, ge=0, le=1)
    send_default_pii: bool = False


class Jwt(Section):
    """How the gateway verifies Fechatter's access tokens (EdDSA)."""

    #: Ed25519 public key, PEM; literal ``\\n`` escapes are accepted.
    public_key: str | None = None
    audience: str = "fechatter-web"
    issuer: str = "fechatter-server"
    leeway: Seconds = 60.0

    @field_validator("public_key")
    @classmethod
    def _unescape_newlines(cls, value: str | None) -> str | None:
        # Env vars and one-line YAML often carry the PEM with literal "\n" escapes.
        return value.replace("\\n", "\n").strip() + "\n" if value else value


class Limits(Section):
    """What one process admits, so that no client (or token) can exhaust it (0 = no limit).

    Refusals are JSON ``{"error": code, "reason": ...}`` with 429/503 (+ ``Retry-After``),
    431/414/400 or 408; see README "Gateway limits".
    """

    #: Streams one user may hold open on this process. The next one is refused with 429 and the
    #: open ones are kept: closing an old stream makes the web client close its current one
    #: (docs/web-client-contract.md#many-streams-per-user-never-evict). That client keeps one
    #: stream per chat switch until the token expires, so a busy user holds dozens.
    max_streams_per_user: int = Field(default=64, ge=0)
    #: New streams per second per client address (token bucket refill), and the bucket size.
    #: Offices behind one NAT share an address: keep the burst above a reconnect wave of theirs.
    connect_rate: float = Field(default=20.0, ge=0)
    connect_burst: int = Field(default=100, ge=1)
    #: Peers (addresses or CIDRs) whose ``X-Forwarded-For`` names the client. Empty: the TCP
    #: peer is the client, because anyone can write that header.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Open connections above which new streams get 503. None: derived from the open-files
    #: limit (RLIMIT_NOFILE, raised to its hard limit at start) minus a reserve.
    max_connections: int | None = Field(default=None, ge=0)
    #: Resident memory above which new streams get 503: bytes ("1.5GiB") or a share ("80%")
    #: of the container's memory limit (cgroup), else of the machine's memory.
    max_memory: Annotated[int | str, BeforeValidator(parse_size_or_percent)] = "80%"
    #: Unsent bytes one stream may hold (besides ``gateway.stream_buffer`` frames) before it
    #: is dropped as a slow client.
    stream_buffer_bytes: Annotated[int, BeforeValidator(parse_size), Field(ge=0)] = 1024 * 1024
    #: Request headers, all lines together (431 above; one line alone also counts).
    max_header_bytes: Annotated[int, BeforeValidator(parse_size), Field(ge=0)] = 16 * 1024
    #: The query string (414 above); it carries the web client's ``access_token``.
    max_query_bytes: Annotated[int, BeforeValidator(parse_size), Field(ge=0)] = 8 * 1024
    #: An access token, wherever it came from (400 above): never parsed when larger.
    max_token_bytes: Annotated[int, BeforeValidator(parse_size), Field(ge=0)] = 4 * 1024
    #: Seconds a connection has to send complete request headers (408, then closed).
    header_read_timeout: Seconds = 10.0

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("max_memory")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 (no limit), a byte size or a percentage")
        return value


class Gateway(Section):
    """The SSE endpoint browsers connect to."""

    host: str = "0.0.0.0"
    port: Port = 6687
    jwt: Jwt = Field(default_factory=Jwt)
    #: SSE comment interval; proxies close idle streams at ~100 s.
    keep_alive: PositiveSeconds = 20.0
    cors_allow_origin: str = "*"
    #: Frames buffered per stream before a slow client is disconnected.
    stream_buffer: int = Field(default=256, ge=1)
    presence_ttl: PositiveSeconds = 60.0
    limits: Limits = Field(default_factory=Limits)
    #: Most inbox entries one reconnect replays; a client further behind gets
    #: ``resync_required`` (reason ``too_far_behind``) instead of an unbounded replay.
    replay_max_entries: int = Field(default=1000, ge=1, le=100_000)
    #: SIGTERM: open streams are closed spread evenly over this window (each with a jittered
    #: ``retry:``), so their clients move to the other gateways without a thundering herd.
    #: Keep it below the platform's kill grace period with a second to spare for the rest of the
    #: shutdown: honcho and foreman send SIGKILL 5 s after SIGTERM (Kubernetes and Heroku: 30 s, where
    #: a longer window spreads a large gateway's reconnects thinner).
    drain_window: Seconds = 4.0
    #: The operator token of the ops page (``/ops``, ``/ops/data``; README "Ops page"). Unset or
    #: empty: the page is off (404). At least 32 characters of ``A-Z a-z 0-9 . _ ~ -`` (pasted into
    #: a URL as is): ``openssl rand -hex 32``.
    ops_token: SecretStr | None = None

    @field_validator("ops_token")
    @classmethod
    def _strong_ops_token(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty NOTIFY__GATEWAY__OPS_TOKEN= turns the page off rather than failing the start.
        if value is None or not value.get_secret_value().strip():
            return None
        # (Reported at gateway.ops_token with its origin; the loader never prints a secret key's value.)
        problem = ops_token_problem(value.get_secret_value())
        if problem:
            raise ValueError(f"ops_token {problem}")
        return value


#: The shortest operator token accepted (``openssl rand -hex 32`` gives 64 characters).
OPS_TOKEN_MIN_LENGTH = 32
_OPS_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-")


def ops_token_problem(token: str) -> str | None:
    """What is wrong with ``token`` as ``gateway.ops_token`` (None: nothing); never quotes it."""
    if len(token) < OPS_TOKEN_MIN_LENGTH:
        return (f"is {len(token)} characters long, at least {OPS_TOKEN_MIN_LENGTH} are needed; "
                "generate one with `openssl rand -hex 32`")
    if not set(token) <= _OPS_TOKEN_ALPHABET:
        return ("may only hold A-Z a-z 0-9 . _ ~ - (it is pasted into a URL as is); "
                "generate one with `openssl rand -hex 32`")
    return None


class Health(Section):
    """Liveness/readiness HTTP endpoints of the bridge and the worker supervisor (0 = off).

    Each process type has its own default port, so the Procfile's processes run side by side
    on one host (honcho, foreman, ``heroku local``); the gateway serves ``/healthz`` on
    ``gateway.port``. When ``port`` and ``metrics.port`` are equal one server serves both.
    """

    host: str = "0.0.0.0"
    #: The bridge's.
    port: Port = 8081
    #: The worker supervisor's.
    worker_port: Port = 8082


class Metrics(Section):
    """Prometheus text endpoints of the bridge and the worker supervisor (0 = off)."""

    host: str = "0.0.0.0"
    #: The bridge's.
    port: Port = 9091
    #: The worker supervisor's (the sum over its worker processes).
    worker_port: Port = 9092


class Database(Section):
    """Fechatter's PostgreSQL, read only for the membership fallback."""

    url: SecretStr | None = None
    pool_min: int = Field(default=1, ge=0)
    pool_max: int = Field(default=4, ge=1)


class Settings(Section):
    """The whole configuration of fechatter-notify, loaded once and passed to every process."""

    nats: NatsConnection = Field(default_factory=NatsConnection)
    jetstream: JetStream = Field(default_factory=JetStream)
    realtime: Realtime = Field(default_factory=Realtime)
    redis: Redis = Field(default_factory=Redis)
    queues: Queues = Field(default_factory=Queues)
    dead_letters: DeadLetters = Field(default_factory=DeadLetters)
    events: Events = Field(default_factory=Events)
    delivery: Delivery = Field(default_factory=Delivery)
    sentry: Sentry = Field(default_factory=Sentry)
    gateway: Gateway = Field(default_factory=Gateway)
    health: Health = Field(default_factory=Health)
    metrics: Metrics = Field(default_factory=Metrics)
    database: Database = Field(default_factory=Database)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        # SecretStr already hides passwords, tokens and DSNs; this also hides URL credentials.
        from settings.redact import redacted

        yield from redacted(self.model_dump()).items()
