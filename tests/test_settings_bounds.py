"""notify.yml read as an attacker would write it: every bound is a problem with its place, never a hang.

Each case runs through ``load_settings`` and through ``fechatter-notify config check`` as a real
process under a 512 MiB address-space limit and a deadline: before the bounds, the alias bomb
ran for minutes past 1 GB, and 1.5 million keys did the same.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from settings import ConfigError, ConfigFileError, Problem, load_settings
from settings.safe_yaml import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parents[1]
#: A `config check` of any file, however hostile, finishes within this (a cold start is ~1s).
CHECK_DEADLINE_S = 20.0
MEMORY_LIMIT = 512 * 1024 * 1024

VALID = "gateway:\n  port: 7000\nredis:\n  namespace: bounds\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level a list of ``width`` aliases of the level before."""
    lines = [f"lol0: &lol0 [{', '.join(['lol'] * width)}]"]
    for n in range(1, levels):
        lines.append(f"lol{n}: &lol{n} [{', '.join([f'*lol{n - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def many_keys(count: int) -> str:
    return "".join(f"k{i}: {i}\n" for i in range(count))


def many_keys_within_the_size_bound() -> str:
    # As many keys as fit under the size bound: only the node bound can stop them.
    text, i = [], 0
    size = 0
    while size < MAX_FILE_BYTES - 64:
        line = f"k{i}: 1\n"
        text.append(line)
        size += len(line)
        i += 1
    return "".join(text)


#: (name, bytes appended to a valid file, problem code, where: (line, col) or None)
ATTACKS: list[tuple[str, bytes, str, tuple[int, int] | None]] = [
    ("alias bomb", alias_bomb().encode(), "alias_expansion", (9, 14)),  # at the first alias past the bound
    ("1.5 million keys", many_keys(1_500_000).encode(), "file_too_large", None),
    ("keys past the node bound", many_keys_within_the_size_bound().encode(), "too_many_nodes", (5000, 8)),
    ("non-UTF-8 bytes", b"sentry:\n  environment: caf\xe9\n", "not_utf8", (6, 19)),
    ("duplicate keys", b"gateway:\n  host: 127.0.0.1\n", "duplicate_key", (5, 1)),
]


def file_problem(path: Path) -> Problem:
    with pytest.raises(ConfigFileError) as info:
        load_settings(str(path), env={})
    (problem,) = info.value.problems
    return problem


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def config_check(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fechatter_notify", "config", "check", "--config", str(path)],
                            cwd=path.parent, env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent)},
                            capture_output=True, text=True, timeout=CHECK_DEADLINE_S, preexec_fn=limit_memory)
    return result, time.monotonic() - started


@pytest.mark.parametrize(("name", "attack", "code", "where"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_a_hostile_file_is_refused_with_its_place(
    tmp_path: Path, name: str, attack: bytes, code: str, where: tuple[int, int] | None
) -> None:
    path = tmp_path / "notify.yml"
    path.write_bytes(VALID.encode() + attack)
    started = time.monotonic()
    problem = file_problem(path)
    assert time.monotonic() - started < 5, "reading was not bounded"
    assert problem.code == code and problem.level == "error"
    assert problem.origin == (f"{path}:{where[0]}:{where[1]}" if where else str(path))
    assert problem.fix


@pytest.mark.parametrize(("name", "attack", "code", "where"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_config_check_refuses_a_hostile_file_fast_in_the_problem_format(
    tmp_path: Path, name: str, attack: bytes, code: str, where: tuple[int, int] | None
) -> None:
    path = tmp_path / "notify.yml"
    path.write_bytes(VALID.encode() + attack)
    result, _elapsed = config_check(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    place = f"{path}:{where[0]}:{where[1]}" if where else str(path)
    assert f"{place}: error [{code}] <file>: " in result.stderr, result.stderr
    assert "Fix: " in result.stderr and "1 error(s)" in result.stderr


def test_duplicate_keys_name_both_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("notify.yml", env={}, text="jetstream:\n  consumers:\n    - batch: 5\n      ack_wait: 9s\n"
                                               "      batch: 6\n")
    (problem,) = info.value.problems
    assert problem.code == "duplicate_key" and problem.origin == "notify.yml:5:7"
    assert "'batch'" in problem.message and "line 3" in problem.message and "line 5" in problem.message


def test_a_key_written_once_per_mapping_is_not_a_duplicate() -> None:
    text = "jetstream:\n  streams:\n    - name: A\n  consumers:\n    - stream: A\n      durable: a\n"
    loaded = load_settings("notify.yml", env={}, text=text)
    assert loaded.settings.jetstream.consumers[0].durable == "a"


def test_the_first_undecodable_byte_is_named_with_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "notify.yml"
    # Valid UTF-8 (é) before the bad byte: the column counts characters, as editors do.
    path.write_bytes(b"gateway:\n  host: \xc3\xa9\n  cors_allow_origin: '\xc3\xa9 ok \xff'\n")
    problem = file_problem(path)
    assert problem.code == "not_utf8" and problem.origin == f"{path}:3:28"
    assert "0xff" in problem.message and "offset" in problem.message


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "notify.yml"
    path.write_bytes(b"\xef\xbb\xbfgateway:\n  port: 7001\n")
    assert load_settings(str(path), env={}).settings.gateway.port == 7001


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "notify.yml"
    path.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    problem = file_problem(path)
    assert problem.code == "file_too_large" and str(MAX_FILE_BYTES) in problem.message


def test_a_file_at_the_size_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "notify.yml"
    body = VALID.encode()
    path.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body) - 1) + b"\n")
    assert load_settings(str(path), env={}).settings.gateway.port == 7000


@pytest.mark.parametrize(("text", "code"), [
    ("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", "too_deep"),
    ("a: &x\n  b: *x\n", "recursive_alias"),
    ("a: &x 1\nb: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n", "too_many_aliases"),
    ("? [a, b]\n: 1\n", "complex_key"),
    ("a: [" + ", ".join(["1"] * MAX_NODES) + "]\n", "too_many_nodes"),
])
def test_every_other_bound_is_a_problem(text: str, code: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_settings("notify.yml", env={}, text=text)
    assert info.value.problems[0].code == code
    assert info.value.problems[0].origin.startswith("notify.yml:")


def test_a_deeply_nested_flow_is_refused_without_a_recursion_error() -> None:
    depth = 100_000
    with pytest.raises(ConfigFileError) as info:
        load_settings("notify.yml", env={}, text="a: " + "[" * depth + "]" * depth + "\n")
    assert info.value.problems[0].code in {"too_deep", "invalid_yaml"}


def test_aliases_and_merge_keys_within_the_bounds_still_work() -> None:
    text = textwrap.dedent("""
        redis:
          namespace: &ns shared
        queues:
          realtime: *ns
        gateway:
          <<: {host: 127.0.0.1, port: 7002}
          port: 7003
        """)
    s = load_settings("notify.yml", env={}, text=text).settings
    assert s.queues.realtime == "shared"
    assert (s.gateway.host, s.gateway.port) == ("127.0.0.1", 7003)  # explicit keys win over merged ones


def test_invalid_yaml_is_a_problem_at_its_place() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_settings("notify.yml", env={}, text="gateway:\n  port: [1\n")
    (problem,) = info.value.problems
    assert problem.code == "invalid_yaml" and problem.origin.startswith("notify.yml:")


def test_an_unknown_tag_is_a_problem_not_a_traceback() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_settings("notify.yml", env={}, text="gateway:\n  host: !!python/object:os.system x\n")
    assert info.value.problems[0].code == "invalid_yaml"


def test_an_alias_bomb_in_an_environment_override_is_refused_too() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcd", "bcde", strict=True)]
    with pytest.raises(ConfigError) as info:
        load_settings(env={"NOTIFY__REALTIME__SUBJECTS": "{" + ", ".join(levels) + "}"}, text="")
    (problem,) = [p for p in info.value.problems if p.level == "error"]
    assert problem.code == "alias_expansion" and problem.origin == "env NOTIFY__REALTIME__SUBJECTS"


def test_a_typo_in_an_environment_override_is_reported_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"NOTIFY__JETSTREAM__CONSUMERS__0__IDLE_HEARTBEET": "50s"}, text="")
    (problem,) = [p for p in info.value.problems if p.level == "error"]
    assert problem.code == "unknown_key" and "did you mean 'idle_heartbeat'" in problem.message
    assert problem.origin == "env NOTIFY__JETSTREAM__CONSUMERS__0__IDLE_HEARTBEET"


@pytest.mark.parametrize("name", ["NOTIFY_REDIS__URL", "notify__redis__url", "Notify_Redis__Url"])
def test_a_misspelt_override_prefix_is_warned_about_not_skipped_silently(name: str) -> None:
    loaded = load_settings(env={name: "redis://elsewhere:6379/0"}, text="")
    problems = [p for p in loaded.problems if p.code in ("env_name", "unknown_key")]
    assert problems, "the variable was skipped without a word"
    assert problems[0].origin == f"env {name}"
    assert problems[0].fix == "name it NOTIFY__REDIS__URL"


def test_an_override_of_a_fechatter_key_names_our_key_instead() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"NOTIFY__SERVER__PORT": "7000"}, text="")
    (problem,) = [p for p in info.value.problems if p.level == "error"]
    assert problem.code == "env_fechatter_layout" and problem.fix == "use NOTIFY__GATEWAY__PORT"
