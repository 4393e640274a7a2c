"""Loading and validating notify.yml: every rule gives its own problem, at its place."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from settings import ConfigError, ConfigFileError, Problem, load_settings

FIXTURES = Path(__file__).parent / "fixtures"


def problems_of(yaml_text: str, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_settings("notify.yml", env=env or {}, text=textwrap.dedent(yaml_text))
    return info.value.problems


def only_error(yaml_text: str, code: str, env: dict[str, str] | None = None) -> Problem:
    errors = [p for p in problems_of(yaml_text, env) if p.level == "error"]
    assert [p.code for p in errors] == [code], [p.format() for p in errors]
    return errors[0]


def test_defaults_load_without_a_file_and_follow_the_seed() -> None:
    loaded = load_settings(env={}, text="")
    s = loaded.settings
    assert s.nats.ping_interval == 30 and s.nats.connect_timeout == 10
    (consumer,) = s.jetstream.consumers
    # max_deliver is the one departure from the seed's 3: a bridge killed while holding a delivered
    # batch spends one delivery of each of its events, and three such crashes under a backlog gave up
    # on 300 enqueued events in a 100,000-event chaos run
    assert (consumer.ack_wait, consumer.idle_heartbeat, consumer.max_deliver) == (45, 45, 10)
    assert consumer.pull_expiry == 90  # the smallest expiry the server accepts with a 45s heartbeat
    (stream,) = s.jetstream.streams
    assert stream.name == "FECHATTER_EVENTS"
    for subject in ("fechatter.messages.>", "fechatter.chats.>", "fechatter.message.>", "fechatter.chat.>",
                    "fechatter.user.>"):
        assert subject in stream.subjects
    assert s.realtime.subjects == ["fechatter.realtime.>"]
    assert not [p for p in loaded.problems if p.level != "info"]


def test_an_unknown_key_is_an_error_with_a_suggestion_and_its_line() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - durable: x
              ack_wiat: 30s
        """, "unknown_key")
    assert problem.path == "jetstream.consumers[0].ack_wiat"
    assert "did you mean 'ack_wait'" in problem.message
    assert problem.origin == "notify.yml:5:7"


def test_an_unknown_section_is_an_error_too() -> None:
    problem = only_error("redsi:\n  url: redis://x\n", "unknown_key")
    assert "'redis'" in problem.message and problem.origin == "notify.yml:1:1"


def test_all_problems_are_reported_at_once() -> None:
    codes = {p.code for p in problems_of("""
        nats:
          ping_interval: fast
          max_outstanding_pings: 0
        redis:
          namespce: x
        queues:
          realtime: [1]
        """)}
    assert codes >= {"value_error", "greater_than_equal", "unknown_key", "string_type"}


def test_a_wrong_type_names_the_key_value_and_line() -> None:
    problem = only_error("jetstream:\n  streams:\n    - max_bytes: 1\n      replicas: three\n", "int_parsing")
    assert problem.path == "jetstream.streams[0].replicas"
    assert problem.value == "three" and problem.origin == "notify.yml:4:7"


def test_a_range_error_says_the_bound() -> None:
    problem = only_error("jetstream:\n  streams:\n    - replicas: 7\n", "less_than_equal")
    assert problem.fix == "use a value at most 5"


def test_an_enum_error_lists_the_choices() -> None:
    problem = only_error("jetstream:\n  provision: maybe\n", "literal_error")
    assert "'auto'" in (problem.fix or "") and "'verify'" in (problem.fix or "")


def test_heartbeat_not_above_ping_is_the_seeds_error() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - idle_heartbeat: 30s
        """, "heartbeat_not_above_ping")
    assert problem.path == "jetstream.consumers[0].idle_heartbeat"
    assert "missed idle heartbeat" in problem.message and "30s" in problem.message


def test_realtime_heartbeat_from_fechatter_layout_obeys_the_seed_rule_too() -> None:
    problem = only_error("""
        messaging:
          nats:
            jetstream:
              consumers:
                realtime_processor:
                  filter_subjects: ["fechatter.realtime.>"]
                  idle_heartbeat: 15s
        """, "heartbeat_not_above_ping")
    assert problem.path == "realtime.idle_heartbeat" and problem.origin == "notify.yml:8:11"


def test_heartbeat_above_half_the_pull_expiry_is_refused_like_the_server_does() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - idle_heartbeat: 45s
              expires: 60s
        """, "heartbeat_above_half_expiry")
    assert "heartbeat value too large" in problem.message
    assert problem.fix is not None and "1m30s" in problem.fix


def test_ack_wait_must_cover_the_enqueue_time() -> None:
    problem = only_error("""
        redis:
          socket_timeout: 30s
        """, "ack_wait_too_short")
    assert "redis.socket_timeout 30s" in problem.message


def test_the_default_dedupe_window_outlives_every_redelivery_the_default_consumer_allows() -> None:
    # ack_wait 45s x max_deliver 10 = 7.5 min of redeliveries, inside the 1h dedupe window
    assert not [p for p in load_settings(env={}, text="").problems if p.code == "dedupe_window_too_short"]


def test_a_longer_ack_wait_with_the_default_max_deliver_needs_a_longer_dedupe_window() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - ack_wait: 10m
        """, "dedupe_window_too_short")
    # 10m x 10 deliveries = 1h40m of redeliveries
    assert problem.path == "redis.dedupe_window"
    assert "1h40m" in problem.message, problem.format()


def test_backoff_cannot_be_longer_than_max_deliver() -> None:
    only_error("""
        jetstream:
          consumers:
            - max_deliver: 2
              backoff: [50s, 60s, 70s]
        """, "backoff_longer_than_max_deliver")


def test_invalid_subjects_are_errors() -> None:
    problem = only_error("realtime:\n  subjects: ['fechatter.realtime..x']\n", "invalid_subject")
    assert problem.path == "realtime.subjects[0]" and problem.origin == "notify.yml:2:14"


def test_a_filter_outside_its_stream_is_the_no_responders_family() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - filter_subjects: ["fechatter.realtime.>"]
        """, "filter_outside_stream")
    assert "no responders" in problem.message
    assert problem.path == "jetstream.consumers[0].filter_subjects[0]"


def test_overlapping_filters_of_one_consumer_are_refused() -> None:
    only_error("""
        jetstream:
          consumers:
            - filter_subjects: ["fechatter.message.>", "fechatter.message.new"]
        """, "overlapping_filters")


def test_two_consumers_sharing_events_of_one_stream_are_an_error() -> None:
    problem = only_error("""
        jetstream:
          consumers:
            - durable: a
              filter_subjects: ["fechatter.message.>"]
            - durable: b
        """, "consumers_overlap")
    assert "two jobs" in problem.message


def test_a_consumer_of_an_undeclared_stream_is_an_error() -> None:
    problem = only_error("jetstream:\n  consumers:\n    - stream: NOPE\n", "unknown_stream")
    assert "'NOPE'" in problem.message


def test_a_core_subject_captured_by_a_stream_is_double_delivery() -> None:
    problem = only_error("""
        jetstream:
          streams:
            - subjects: ["fechatter.>"]
        """, "realtime_captured_by_stream")
    assert "twice" in problem.message


def test_overlapping_streams_are_refused() -> None:
    errors = [p for p in problems_of("""
        jetstream:
          streams:
            - name: A
              subjects: ["fechatter.message.>"]
            - name: B
              subjects: ["fechatter.message.new"]
          consumers:
            - stream: A
        """) if p.level == "error"]
    assert "overlapping_streams" in {p.code for p in errors}


def test_invalid_names_are_errors() -> None:
    problem = only_error("jetstream:\n  consumers:\n    - durable: 'my.consumer'\n", "invalid_name")
    assert problem.path == "jetstream.consumers[0].durable"


def test_subjects_a_stream_keeps_but_nobody_reads_are_warned() -> None:
    loaded = load_settings(env={}, text=textwrap.dedent("""
        jetstream:
          consumers:
            - filter_subjects: ["fechatter.message.>"]
        """))
    codes = [p.code for p in loaded.warnings]
    assert codes.count("subject_not_consumed") == 5


def test_a_bad_public_key_is_reported() -> None:
    only_error("gateway:\n  jwt:\n    public_key: 'not a key'\n", "invalid_public_key")


def test_the_seed_layout_loads_and_says_how_each_section_was_read() -> None:
    loaded = load_settings(str(FIXTURES / "seed_layout.yml"), env={})
    s = loaded.settings
    assert s.gateway.port == 6687
    assert s.gateway.keep_alive == 20
    assert s.gateway.jwt.public_key is not None and s.gateway.jwt.public_key.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert [st.name for st in s.jetstream.streams] == ["fechatter_events"]
    assert s.jetstream.streams[0].max_age == 12 * 3600
    (consumer,) = s.jetstream.consumers
    assert (consumer.durable, consumer.stream, consumer.batch) == ("notification_processor", "fechatter_events", 100)
    assert s.realtime.subjects == ["fechatter.realtime.>"] and s.realtime.queue_group == "realtime_processor"
    readings = [p.message for p in loaded.problems if p.code == "fechatter_layout"]
    assert any("durable pull consumer" in m for m in readings)
    assert any("core NATS subscriptions" in m for m in readings)


def test_fechatters_own_notify_server_file_is_diagnosed_not_silently_loaded() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(FIXTURES / "fechatter_notify_server.yml"), env={})
    by_code = {p.code: p for p in info.value.problems}
    err = by_code["filter_outside_stream"]
    assert err.value == "fechatter.realtime.>" and err.origin.endswith("fechatter_notify_server.yml:45:13")
    warn = by_code["bare_integer_duration"]
    assert warn.level == "warning" and "12h" in (warn.fix or "") and "43200s" in (warn.fix or "")
    ignored = {p.path for p in info.value.problems if p.code == "ignored_key"}
    assert {"search", "analytics", "auth.sk", "server.request_timeout_ms"} <= ignored


def test_a_key_set_in_both_layouts_is_an_error() -> None:
    only_error("server:\n  port: 1\ngateway:\n  port: 2\n", "set_twice")


def test_env_shortcuts_override_the_file(tmp_path: Path) -> None:
    env = {"NATS_URL": "nats://a:4222,nats://b:4222", "REDIS_URL": "redis://:pw@r:6380/1",
           "SENTRY_DSN": "https://key@sentry.example/1", "NOTIFY_PORT": "7000",
           "DATABASE_URL": "postgresql://u:p@db/fechatter"}
    s = load_settings(env=env, text="gateway:\n  port: 1\n").settings
    assert s.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert s.redis.url.get_secret_value() == "redis://:pw@r:6380/1"
    assert s.gateway.port == 7000
    assert s.sentry.dsn is not None and s.database.url is not None


def test_generic_env_overrides_reach_any_key_including_list_items() -> None:
    env = {"NOTIFY__REALTIME__QUEUE_GROUP": "rt", "NOTIFY__JETSTREAM__CONSUMERS__0__BATCH": "500",
           "NOTIFY__REALTIME__SUBJECTS": "[fechatter.realtime.chat.>]"}
    s = load_settings(env=env, text="").settings
    assert s.realtime.queue_group == "rt"
    assert s.jetstream.consumers[0].batch == 500
    assert s.realtime.subjects == ["fechatter.realtime.chat.>"]


def test_a_bad_env_value_names_the_variable() -> None:
    problem = only_error("", "int_parsing", env={"NOTIFY__JETSTREAM__CONSUMERS__0__BATCH": "lots"})
    assert problem.origin == "env NOTIFY__JETSTREAM__CONSUMERS__0__BATCH"


def test_a_typo_in_an_env_override_is_an_unknown_key() -> None:
    problem = only_error("", "unknown_key", env={"NOTIFY__REDIS__URLL": "redis://x"})
    assert problem.origin == "env NOTIFY__REDIS__URLL" and "'url'" in problem.message


def test_an_explicit_missing_config_path_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError, match="--config names"):
        load_settings(str(tmp_path / "nope.yml"), env={})
    with pytest.raises(ConfigFileError, match=r"\$NOTIFY_CONFIG names"):
        load_settings(None, env={"NOTIFY_CONFIG": str(tmp_path / "nope.yml")})


def test_config_is_searched_flag_then_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notify.yml").write_text("gateway:\n  port: 1\n")
    (tmp_path / "env.yml").write_text("gateway:\n  port: 2\n")
    (tmp_path / "flag.yml").write_text("gateway:\n  port: 3\n")
    assert load_settings(None, env={}).settings.gateway.port == 1
    assert load_settings(None, env={"NOTIFY_CONFIG": "env.yml"}).settings.gateway.port == 2
    assert load_settings("flag.yml", env={"NOTIFY_CONFIG": "env.yml"}).settings.gateway.port == 3


def test_invalid_yaml_is_a_file_error() -> None:
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_settings("notify.yml", env={}, text="a: [\n")


@pytest.mark.parametrize(("env", "code", "path", "reason"), [
    ({"REDIS_URL": "rediss://:pw-SECRET@x:notaport/0"}, "bad_redis_url", "redis.url", "Port could not be cast"),
    ({"REDIS_URL": "http://x:6379"}, "bad_redis_url", "redis.url", "must specify one of the following schemes"),
    ({"REDIS_URL": "redis://x:6379/abc"}, "bad_redis_url", "redis.url", "database 'abc' is not a number"),
    ({"REDIS_URL": "redis://:6379/0"}, "bad_redis_url", "redis.url", "no host"),
    ({"NATS_URL": "nats://u:SECRET@:4222"}, "bad_nats_url", "nats.servers[0]", "no host"),
    ({"NATS_URL": "http://x:4222"}, "bad_nats_url", "nats.servers[0]", "scheme 'http' is not one of"),
    ({"NATS_URL": "nats://x:port"}, "bad_nats_url", "nats.servers[0]", "Port could not be cast"),
    ({"DATABASE_URL": "http://u:SECRET@x/y"}, "bad_database_url", "database.url", 'missing "="'),
    ({"SENTRY_DSN": "https://o1.example/42"}, "bad_sentry_dsn", "sentry.dsn", "Missing public key"),
])
def test_a_malformed_server_address_is_an_error_at_its_source_without_the_secret(
    env: dict[str, str], code: str, path: str, reason: str
) -> None:
    problem = only_error("", code, env)
    assert (problem.path, problem.origin) == (path, f"env {next(iter(env))}")
    assert reason in problem.message
    assert "SECRET" not in problem.format()


def test_well_formed_server_addresses_of_every_kind_load() -> None:
    load_settings(env={
        "REDIS_URL": "unix:///run/redis.sock", "NATS_URL": "tls://u:p@h:4443",
        "DATABASE_URL": "postgresql://pg:pw@db:5432/fechatter", "SENTRY_DSN": "https://key@o1.ingest.sentry.io/42",
    }, text="")
    load_settings(env={"REDIS_URL": "rediss://:pw@h:6380/2", "NATS_URL": "localhost:4222"}, text="")


def test_a_malformed_url_in_the_file_is_reported_at_its_line() -> None:
    problem = only_error("""
        nats:
          servers: ["nats://ok:4222", "nats//typo:4222"]
    """, "bad_nats_url")
    assert problem.path == "nats.servers[1]" and problem.origin.startswith("notify.yml:3:")


def test_the_give_ups_stream_cannot_be_an_event_stream() -> None:
    problem = only_error("""
        jetstream:
          advisories:
            stream: FECHATTER_EVENTS
        """, "advisories_stream_is_an_event_stream")
    assert problem.path == "jetstream.advisories.stream" and "notify.yml:4" in problem.origin


def test_the_give_ups_durable_name_is_checked_like_any_durable() -> None:
    problem = only_error("""
        jetstream:
          advisories:
            durable: "give.ups"
        """, "invalid_name")
    assert problem.path == "jetstream.advisories.durable"


def test_an_empty_give_ups_stream_is_allowed_and_checks_nothing_more() -> None:
    for loaded in (load_settings(env={}, text="jetstream:\n  advisories:\n    stream: ''\n"),
                   load_settings(env={"NOTIFY__JETSTREAM__ADVISORIES__STREAM": ""}, text="")):
        assert loaded.settings.jetstream.advisories.stream == ""
        assert not [p for p in loaded.problems if p.level == "error"]
