"""``doctor`` and ``config check`` on a NATS cluster: a leaderless stream, and R1 streams where one server's
loss takes them down. One real 3-node cluster (tests/cluster.py) is shared by the module's tests."""

from __future__ import annotations

import time

import pytest

from bridge import provision_once
from bridge.diagnose import TIMEOUT_S
from bridge.testing import TEST_CONSUMER, bridge_settings
from fechatter_notify.doctor import diagnose
from settings import Problem, Settings, load_settings
from settings.checks import run_checks
from tests.cluster import CLUSTER_NAME, NatsCluster, nats_cluster
from tests.servers import RedisServer

__all__ = ["nats_cluster"]  # the fixture, imported for pytest

#: Seconds provisioning may take (a cluster places an R3 stream through its meta leader).
PROVISION_TIMEOUT_S = 15.0


def cluster_settings(cluster: NatsCluster, redis_url: str, stream: str, replicas: int) -> Settings:
    """Settings naming all three servers, one stream of ``replicas`` on its own subjects, and its durable."""
    return bridge_settings(cluster.urls[0], redis_url, {
        "nats": {"servers": cluster.urls},
        "jetstream": {"streams": [{"name": stream, "subjects": [f"{stream.lower()}.>"], "replicas": replicas}],
                      "consumers": [{**TEST_CONSUMER, "stream": stream}],
                      # the give-ups' stream follows the event stream's replicas: one per test on the shared cluster
                      "advisories": {"stream": f"{stream}_ADVISORIES"}},
    })


def found(findings: list[Problem], code: str) -> list[Problem]:
    return [f for f in findings if f.code == code]


def describe(findings: list[Problem]) -> str:
    return "\n".join(f.format() for f in findings)


# ------------------------------------------------------------------------------ config check


@pytest.mark.parametrize(("servers", "replicas", "warned"), [
    (["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"], 1, True),
    (["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"], 3, False),
    (["nats://n1:4222"], 1, False),  # one server: R1 is all it can hold
])
def test_config_check_warns_about_an_r1_stream_when_several_servers_are_listed(
    servers: list[str], replicas: int, warned: bool
) -> None:
    text = f"nats:\n  servers: {servers}\njetstream:\n  streams:\n    - replicas: {replicas}\n"
    problems = found(load_settings(text=text, env={}).problems, "stream_r1_on_cluster")
    assert bool(problems) == warned, describe(problems)
    if warned:
        (problem,) = problems
        assert problem.level == "warning" and problem.path == "jetstream.streams[0].replicas"
        assert "'FECHATTER_EVENTS'" in problem.message and "3 servers" in problem.message
        assert problem.fix is not None and "replicas: 3" in problem.fix


# ------------------------------------------------------------------------------ doctor, live


async def test_doctor_warns_about_an_r1_stream_and_durable_on_a_cluster(
    nats_cluster: NatsCluster, redis_server: RedisServer
) -> None:
    # Given an R1 stream and its durable, provisioned on the 3-node cluster
    settings = cluster_settings(nats_cluster, redis_server.url, "R1_EVENTS", replicas=1)
    await provision_once(settings, PROVISION_TIMEOUT_S)
    # When doctor looks at it
    findings = await diagnose(settings)
    # Then both are named as one server's loss away from 'no responders', and nothing is leaderless
    stream, advisories = found(findings, "stream_r1_on_cluster")
    assert stream.level == "warning" and stream.path == "jetstream.streams[0].replicas", describe(findings)
    assert "stream R1_EVENTS has 1 replica on cluster " + CLUSTER_NAME in stream.message
    assert stream.fix is not None and "replicas: 3" in stream.fix
    durable, reader = found(findings, "consumer_r1_on_cluster")
    assert "consumer R1_EVENTS/notification_processor" in durable.message
    # and so are the give-ups' stream and durable, which follow the event stream's replicas
    assert advisories.path == "jetstream.advisories" and "R1_EVENTS_ADVISORIES" in advisories.message
    assert advisories.fix is not None and "jetstream.streams[].replicas: 3" in advisories.fix
    assert "consumer R1_EVENTS_ADVISORIES/fechatter_notify_advisories" in reader.message
    assert not found(findings, "stream_leaderless") and not found(findings, "consumer_leaderless")
    # and config check's rule says so on paper as well (doctor lists the configuration's findings first)
    assert found(run_checks(settings, {}), "stream_r1_on_cluster")


async def test_doctor_reports_a_leaderless_stream_while_it_has_none_and_health_after(
    nats_cluster: NatsCluster, redis_server: RedisServer
) -> None:
    # Given an R3 stream and durable on the cluster, healthy
    settings = cluster_settings(nats_cluster, redis_server.url, "R3_EVENTS", replicas=3)
    await provision_once(settings, PROVISION_TIMEOUT_S)
    nats_cluster.wait_stream_leader("R3_EVENTS")
    nats_cluster.wait_consumer_leader("R3_EVENTS", "notification_processor")
    healthy = await diagnose(settings)
    cluster_codes = {"stream_leaderless", "consumer_leaderless", "stream_r1_on_cluster", "consumer_r1_on_cluster",
                     "jetstream_unavailable", "jetstream_request_failed", "nats_unreachable"}
    assert not [f for f in healthy if f.code in cluster_codes], describe(healthy)
    # When two of its three servers are killed -9: no majority, so no leader can be elected
    survivor = nats_cluster.least_leading("R3_EVENTS", "notification_processor")
    for node in nats_cluster.nodes:
        if node is not survivor:
            nats_cluster.kill(node.name)
    try:
        # (at once: the survivor still takes the dead leaders for alive, and its requests time out)
        began = time.monotonic()
        findings = await diagnose(settings)
        took = time.monotonic() - began
    finally:
        nats_cluster.heal()
    # Then doctor names the stream (and its durable) as leaderless or unavailable: an error with a fix
    # (the give-ups' stream too, unless the survivor led it: it then still answers from its stale view)
    (stream,) = [f for f in found(findings, "stream_leaderless") if f.path == "jetstream.streams[0]"]
    assert stream.level == "error" and stream.path == "jetstream.streams[0]", describe(findings)
    assert "stream R3_EVENTS is leaderless or unavailable" in stream.message
    assert stream.fix is not None and "missing servers" in stream.fix
    assert stream.origin == survivor.url
    (durable,) = [f for f in found(findings, "consumer_leaderless") if f.path == "jetstream.consumers[0]"]
    assert "consumer R3_EVENTS/notification_processor" in durable.message
    assert not found(findings, "jetstream_request_failed"), describe(findings)
    # one request timeout (doctor's TIMEOUT_S, 5 s) for all its requests together, not one per request
    assert took < TIMEOUT_S + 3, f"doctor took {took:.1f}s"
    print(f"doctor on a cluster without a majority took {took:.1f}s")
    # And once the two servers are back and a leader is elected, doctor finds the stream healthy again
    nats_cluster.wait_stream_leader("R3_EVENTS")
    nats_cluster.wait_consumer_leader("R3_EVENTS", "notification_processor")
    nats_cluster.wait_stream_leader("R3_EVENTS_ADVISORIES")
    nats_cluster.wait_consumer_leader("R3_EVENTS_ADVISORIES", "fechatter_notify_advisories")
    after = await diagnose(settings)
    assert not [f for f in after if f.code in cluster_codes], describe(after)
    assert found(after, "stream") and found(after, "consumer")
