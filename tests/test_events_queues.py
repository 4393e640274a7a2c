"""events.queues spells dramatiq's Redis layout; dramatiq's own dispatch script must still agree with it."""

from __future__ import annotations

from importlib.resources import files

from dramatiq.common import dq_name, xq_name

from events.queues import dead_letter_queue, delay_queue, heartbeats_key, is_delay_queue, messages_key, queue_key

DISPATCH = (files("dramatiq.brokers") / "redis" / "dispatch.lua").read_text()


def test_queue_names_match_dramatiq() -> None:
    assert delay_queue("notify") == dq_name("notify")
    assert dead_letter_queue("notify") == xq_name("notify")
    assert is_delay_queue(delay_queue("notify"))
    assert not is_delay_queue("notify")
    assert not is_delay_queue(dead_letter_queue("notify"))


def test_keys_match_dramatiqs_dispatch_script() -> None:
    # The script's own spelling of each key, with namespace "ns" and queue "notify".
    assert 'local queue_full_name = namespace .. ":" .. queue_name' in DISPATCH
    assert queue_key("ns", "notify") == "ns" + ":" + "notify"
    assert 'local queue_messages = queue_full_name .. ".msgs"' in DISPATCH
    assert messages_key("ns", "notify") == queue_key("ns", "notify") + ".msgs"
    assert 'local heartbeats = namespace .. ":__heartbeats__"' in DISPATCH
    assert heartbeats_key("ns") == "ns" + ":__heartbeats__"
    assert 'namespace .. ":" .. queue_canonical_name .. ".XQ"' in DISPATCH
    assert queue_key("ns", dead_letter_queue("notify")) == "ns:notify.XQ"
