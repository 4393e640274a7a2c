"""settings: one typed, validated configuration (notify.yml + environment overrides)."""

from settings.diff import changed_paths
from settings.durations import DurationError, format_duration, parse_duration
from settings.load import Loaded, load_settings
from settings.model import (
    DEFAULT_DOMAIN_SUBJECTS,
    Advisories,
    Consumer,
    Database,
    Delivery,
    Events,
    Health,
    JetStream,
    Jwt,
    Limits,
    NatsConnection,
    Realtime,
    Redis,
    RedisTLS,
    Sentry,
    Settings,
    Stream,
)
from settings.problems import ConfigError, Path, Problem, dotted
from settings.redact import redact_url, redact_urls_in, redacted
from settings.redis_target import SentinelTarget, is_sentinel_url, parse_sentinel_url, sentinel_target
from settings.sizes import parse_size, parse_size_or_percent, percent_of
from settings.sources import ConfigFileError, Origins
from settings.subjects import subject_within

__all__ = [
    # Loading
    "Loaded",
    "load_settings",
    "Origins",
    # The model (each section a class)
    "DEFAULT_DOMAIN_SUBJECTS",
    "Advisories",
    "Consumer",
    "Database",
    "Delivery",
    "Events",
    "Health",
    "JetStream",
    "Jwt",
    "Limits",
    "NatsConnection",
    "Realtime",
    "Redis",
    "RedisTLS",
    "Sentry",
    "Settings",
    "Stream",
    # Problems and where they are
    "ConfigError",
    "ConfigFileError",
    "Path",
    "Problem",
    "dotted",
    # Reloading
    "changed_paths",
    # Helpers
    "DurationError",
    "format_duration",
    "parse_duration",
    "parse_size",
    "parse_size_or_percent",
    "percent_of",
    "redact_url",
    "redact_urls_in",
    "redacted",
    "subject_within",
    # Which Redis: one server or a Sentinel-managed primary
    "SentinelTarget",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_target",
]
