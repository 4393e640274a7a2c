"""The ``fechatter-notify`` command: a thin shell over each package's public entry point.

Exit codes are named constants; every subcommand loads the settings once and hands them over.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

import yaml

from runtime import RET_CONFIG, RET_OK, describe_redis
from settings import ConfigError, Loaded, Problem, load_settings, redact_url, redacted

#: Subcommands that run a process: name -> "module:function(loaded, args) -> int".
PROCESSES: dict[str, tuple[str, str]] = {
    "bridge": ("bridge:run", "NATS -> typed jobs on Redis (acks JetStream after enqueue)"),
    "worker": ("workers:run", "dramatiq workers: jobs -> per-user notifications"),
    "gateway": ("gateway:run", "the SSE endpoint browsers connect to"),
    "dev": ("fechatter_notify.dev:run", "everything locally, with embedded nats-server/redis-server"),
    "provision": ("fechatter_notify.provision:run", "create/update the JetStream streams and consumers, then "
                  "exit (Procfile release:); exit 3 when refused"),
    "publish": ("fechatter_notify.publish:run", "demo: publish a chat's Fechatter events, optionally watch a "
                "user's stream"),
    "top": ("fechatter_notify.top:run", "live view of every running bridge, worker and gateway (rates, lag, "
            "queues); --once --format json for scripts"),
}

#: Subcommands whose module adds its own options with ``add_arguments(parser)``.
OWN_OPTIONS = ("dev", "publish", "provision", "top")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, in one place."""
    parser = argparse.ArgumentParser(prog="fechatter-notify", description=__doc__)
    parser.add_argument("--config", metavar="PATH", help="notify.yml to load (default: $NOTIFY_CONFIG, "
                        "./notify.yml, /etc/fechatter/notify.yml)")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="report every problem with its place; exit 2 on errors")
    check.add_argument("--config", dest="sub_config", metavar="PATH")
    check.add_argument("--quiet", action="store_true", help="only errors and warnings")
    show = config_sub.add_parser("show", help="print the effective configuration, secrets redacted")
    show.add_argument("--config", dest="sub_config", metavar="PATH")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    doctor = sub.add_parser("doctor", help="check the live NATS, JetStream and Redis against the settings; "
                            "exit 2 on errors")
    doctor.add_argument("--config", dest="sub_config", metavar="PATH")
    doctor.add_argument("--quiet", action="store_true", help="only errors and warnings")
    doctor.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: a list of {level, code, path, message, origin, fix}")
    dlq = sub.add_parser("dlq", help="dead letters of the bridge and of dramatiq: list, show, replay, purge")
    import_module("fechatter_notify.dlq").add_arguments(dlq)
    for name, (_, help_text) in PROCESSES.items():
        proc = sub.add_parser(name, help=help_text)
        proc.add_argument("--config", dest="sub_config", metavar="PATH")
        if name == "worker":
            proc.add_argument("-p", "--processes", type=int, default=None, help="worker processes")
            proc.add_argument("-t", "--threads", type=int, default=None, help="threads per process")
            proc.add_argument("-Q", "--queues", nargs="*", default=None, help="only these queues")
        if name in OWN_OPTIONS:
            import_module(f"fechatter_notify.{name}").add_arguments(proc)
    return parser


def _print_problems(problems: Sequence[Problem], *, quiet: bool = False) -> None:
    for problem in problems:
        if quiet and problem.level == "info":
            continue
        stream = sys.stderr if problem.level == "error" else sys.stdout
        print(problem.format(), file=stream)


def _load(args: argparse.Namespace) -> Loaded | int:
    path = getattr(args, "sub_config", None) or args.config
    try:
        return load_settings(path)
    except ConfigError as exc:  # a file that cannot be read or parsed too, with its place
        _print_problems(exc.problems, quiet=getattr(args, "quiet", False))
        errors = sum(p.level == "error" for p in exc.problems)
        print(f"\n{errors} error(s); the configuration was not loaded.", file=sys.stderr)
        return RET_CONFIG


def _summary(loaded: Loaded) -> str:
    from settings import format_duration as fmt

    s = loaded.settings
    lines = [f"configuration OK: {loaded.source}", f"  nats: {', '.join(redact_url(u) for u in s.nats.servers)} "
             f"(ping {fmt(s.nats.ping_interval)} x {s.nats.max_outstanding_pings})"]
    for st in s.jetstream.streams:
        lines.append(f"  stream {st.name}: {', '.join(st.subjects)} ({st.storage}, R{st.replicas}, "
                     f"max_age {fmt(st.max_age)})")
    for c in s.jetstream.consumers:
        lines.append(f"  durable pull consumer {c.durable} on {c.stream}: "
                     f"{', '.join(c.filter_subjects) or 'whole stream'}; pull batch {c.batch}, expires "
                     f"{fmt(c.pull_expiry)}, heartbeat {fmt(c.idle_heartbeat)} per request, ack_wait "
                     f"{fmt(c.ack_wait)}, max_deliver {c.max_deliver}")
    lines.append(f"  core NATS (queue group {s.realtime.queue_group}): {', '.join(s.realtime.subjects)}")
    lines.append(f"  redis: {describe_redis(s.redis)} namespace {s.redis.namespace!r}; "
                 f"queues {s.queues.realtime!r} (realtime), {s.queues.domain!r} (domain)")
    lines.append(f"  gateway: {s.gateway.host}:{s.gateway.port}; jwt key "
                 f"{'set' if s.gateway.jwt.public_key else 'NOT SET (every stream will get 401)'}")
    return "\n".join(lines)


def _config_command(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    if args.config_command == "check":
        _print_problems(loaded.problems, quiet=args.quiet)
        print(_summary(loaded))
        return RET_OK
    data = redacted(loaded.settings.model_dump(mode="python"))
    if args.format == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False), end="")
    return RET_OK


def _resolve(target: str) -> Callable[[Loaded, argparse.Namespace], int]:
    module, _, func = target.partition(":")
    return getattr(import_module(module), func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return _config_command(args)
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    if args.command == "doctor":
        from fechatter_notify.doctor import run as doctor

        return doctor(loaded, args)
    if args.command == "dlq":
        from fechatter_notify.dlq import run as dlq

        return dlq(loaded, args)
    for problem in loaded.warnings:
        print(problem.format(), file=sys.stderr)
    return _resolve(PROCESSES[args.command][0])(loaded, args)


if __name__ == "__main__":
    raise SystemExit(main())
