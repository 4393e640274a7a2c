"""settings: one typed, validated configuration (notify.yml + environment overrides)."""

from settings.durations import format_duration, parse_duration
from settings.load import Loaded, load_settings
from settings.model import Consumer, Settings, Stream
from settings.problems import ConfigError, Problem
from settings.redact import redact_url, redacted
from settings.sources import ConfigFileError

__all__ = [
    # Loading
    "Loaded",
    "load_settings",
    # The model
    "Consumer",
    "Settings",
    "Stream",
    # Problems
    "ConfigError",
    "ConfigFileError",
    "Problem",
    # Helpers
    "format_duration",
    "parse_duration",
    "redact_url",
    "redacted",
]
