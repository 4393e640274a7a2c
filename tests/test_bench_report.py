"""bench/report.py and bench/run_all.py on canned benchmark output: no server, no real benchmark.

Given the JSON documents a few bench runs wrote (the shape every bench script shares), the report
has the right medians and min-max, ratios computed round by round against the baseline measured
in the same run, targets checked, a markdown table per bench, the plots as files; run_all records
a failing bench (exit code, stderr tail) and goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    # bench/ is scripts, not a package: load the modules by path, as run_all.py does by sys.path.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = _load("report")
run_all = _load("run_all")


def bridge_round(round_: int, bridge: float, fetch: float, raw: float) -> Any:
    """What bench/bridge.py --json writes (the shape of the shared rules), as a Run."""
    document = {"figures": [
        {"name": "fetch() events/s", "value": fetch, "unit": "events/s", "baseline": None, "target": None},
        {"name": "MSG.NEXT events/s", "value": raw, "unit": "events/s", "baseline": None, "target": None},
        {"name": "bridge events/s", "value": bridge, "unit": "events/s", "baseline": "MSG.NEXT events/s",
         "target": ">= 0.60"},
        {"name": "bridge / fetch()", "value": bridge / fetch, "unit": "ratio", "baseline": "fetch() events/s",
         "target": "> 1"},
    ], "meta": {"events": 50000}}
    return report.Run.from_output("bridge", round_, document, seconds=30.0 + round_)


def latency_round(round_: int, p99: float | None, samples: list[float]) -> Any:
    document = {"figures": [
        {"name": "wake p99", "value": p99, "unit": "ms", "baseline": None, "target": "<= 20"},
        {"name": "lost", "value": 0, "unit": "events", "baseline": None, "target": "== 0"},
    ], "meta": {"samples": {"wake 1000/s": samples}}}
    return report.Run.from_output("latency", round_, document, seconds=12.0)


@pytest.fixture
def runs() -> list[Any]:
    return [
        bridge_round(1, bridge=100.0, fetch=50.0, raw=200.0),   # bridge/raw 0.50
        bridge_round(2, bridge=150.0, fetch=60.0, raw=200.0),   # 0.75
        bridge_round(3, bridge=130.0, fetch=70.0, raw=200.0),   # 0.65
        latency_round(1, 3.0, [1.0, 2.0, 3.0]),
        latency_round(2, None, [4.0]),                          # p99 not measured this round (NaN/null)
        report.Run("latency", 3, seconds=300.0, exit_code=None, error="stopped after the 300 s timeout",
                   stderr_tail="Traceback (most recent call last):\nTimeoutError"),
    ]


def by_name(summaries: list[Any]) -> dict[str, Any]:
    return {s.name: s for s in summaries}


def test_each_figure_is_the_median_and_min_max_over_its_rounds(runs: list[Any]) -> None:
    bridge = by_name(report.aggregate(runs)["bridge"])

    fetch = bridge["fetch() events/s"]
    assert (fetch.value.median, fetch.value.low, fetch.value.high, fetch.value.n) == (60.0, 50.0, 70.0, 3)
    assert fetch.ratio is None and fetch.meets is None  # an absolute number, no target


def test_a_figure_with_a_baseline_of_the_same_unit_is_a_ratio_computed_round_by_round(runs: list[Any]) -> None:
    bridge = by_name(report.aggregate(runs)["bridge"])["bridge events/s"]

    # The median of the per-round ratios (0.50, 0.75, 0.65), not the ratio of the medians (130/200).
    assert bridge.ratio.median == pytest.approx(0.65)
    assert (bridge.ratio.low, bridge.ratio.high) == (pytest.approx(0.50), pytest.approx(0.75))
    assert bridge.value.median == 130.0
    # The target applies to the ratio: 0.65 >= 0.60.
    assert bridge.meets is True


def test_a_figure_written_as_a_ratio_is_taken_as_is(runs: list[Any]) -> None:
    ratio = by_name(report.aggregate(runs)["bridge"])["bridge / fetch()"]

    assert ratio.ratio is None  # units differ: the value already is the ratio
    assert ratio.value.median == pytest.approx(2.0)  # 100/50, 150/60, 130/70
    assert ratio.meets is True


def test_a_round_without_the_figure_counts_less_and_a_missed_target_says_no(runs: list[Any]) -> None:
    latency = by_name(report.aggregate(runs)["latency"])

    p99 = latency["wake p99"]
    assert p99.value.n == 1 and p99.rounds == 3
    assert p99.meets is True
    table = "\n".join(report.bench_table(report.aggregate(runs)["latency"]))
    assert "| wake p99 | 3 | \u2013 | ms | \u2013 | <= 20 | yes | 1 of 3 |" in table

    late = report.aggregate([latency_round(1, 25.0, [1.0]), latency_round(2, 21.0, [1.0])])["latency"]
    assert by_name(late)["wake p99"].meets is False
    assert "| wake p99 | 23 | 21\u201325 | ms | \u2013 | <= 20 | **no** | 2 |" in report.bench_table(late)


@pytest.mark.parametrize(("text", "value", "meets"), [
    (">= 0.60", 0.6, True), (">= 0.60", 0.59, False), ("<= 20", 20.5, False), ("== 0", 0.0, True),
    ("\u2265 1,000", 1000.0, True), ("> 1", 1.0, False), ("about twice", 2.0, None),
])
def test_targets_are_parsed_and_checked(text: str, value: float, meets: bool | None) -> None:
    assert report.Target.parse(text).met_by(value) is meets


@pytest.mark.parametrize(("value", "shown"), [
    (57123.4, "57,123"), (143.4, "143"), (12.345, "12.3"), (0.6512, "0.65"), (0.0012, "0.0012"), (0.0, "0"),
    (1.0, "1"), (200.0, "200"),
])
def test_numbers_read_with_about_three_significant_digits(value: float, shown: str) -> None:
    assert report.number(value) == shown


def test_the_markdown_table_shows_the_ratio_beside_its_baseline(runs: list[Any]) -> None:
    table = report.bench_table(report.aggregate(runs)["bridge"])

    assert table[0] == ("| figure | median | min\u2013max | unit | vs baseline (same run) | target | met | rounds |")
    assert ("| bridge events/s | 130 | 100\u2013150 | events/s | **0.65\u00d7** MSG.NEXT events/s "
            "(0.50\u20130.75) | >= 0.60 | yes | 3 |") in table
    assert "| bridge / fetch() | 2 | 1.86\u20132.50 | ratio | ratio to fetch() events/s | > 1 | yes | 3 |" in table


def test_yes_no_figures_say_in_how_many_rounds_and_other_baselines_are_only_named() -> None:
    def gateway(round_: int, ok: float) -> Any:
        return report.Run.from_output("gateway", round_, {"figures": [
            {"name": "streams held", "value": ok, "unit": "bool", "target": "== 1"},
            {"name": "rss_idle", "value": 90.0, "unit": "MB"},
            {"name": "per stream", "value": 8.5, "unit": "KB", "baseline": "rss_idle", "target": "<= 11"},
            {"name": "idle cpu", "value": 2.0, "unit": "us/s"},
            {"name": "frames", "value": 5e4, "unit": "frames/s"},
        ]})

    summaries = report.aggregate([gateway(1, 1.0), gateway(2, 0.0), gateway(3, 1.0)])
    table = report.bench_table(summaries["gateway"])

    assert "| streams held | yes in 2 of 3 | \u2013 | bool | \u2013 | == 1 | yes | 3 |" in table
    # KB per stream "net of" an MB baseline is no ratio: named, not plotted with the ratios.
    assert "| per stream | 8.50 | \u2013 | KB | baseline: rss_idle | <= 11 | yes | 3 |" in table
    assert report.ratio_summaries(summaries) == []
    # CPU microseconds per second is a rate but no throughput.
    assert [s.name for s in report.throughput_summaries(summaries)["gateway"]] == ["frames"]
    assert "| gateway | streams held | == 1 | yes in 2 of 3 | yes |" in report.targets_table(summaries)


def context() -> Any:
    return report.ReportContext(started="2026-11-29 21:00 UTC", command="python bench/run_all.py --rounds 3",
                                rounds=3, seed=1, quick=False, elapsed_s=600.0,
                                machine={"CPU": "Test CPU, 2 logical CPUs", "other load at start": "load 0.10"},
                                commands={"bridge": "python bench/bridge.py --seed 1 --json PATH"})


def test_the_report_names_the_machine_the_targets_and_each_failure(runs: list[Any], tmp_path: Path) -> None:
    text = report.render(context(), runs, {}, tmp_path)

    assert text.startswith("# Benchmark results\n")
    assert "| CPU | Test CPU, 2 logical CPUs |" in text
    assert "`python bench/bridge.py --seed 1 --json PATH`" in text
    assert "| bridge | bridge events/s | >= 0.60 | 0.65\u00d7 MSG.NEXT events/s | yes |" in text
    assert "## bridge" in text and "## latency" in text
    assert "Round 3 failed (did not finish, after 300 s): stopped after the 300 s timeout" in text
    assert "```\nTraceback (most recent call last):\nTimeoutError\n```" in text
    assert "Interrupted" not in text
    stopped = report.render(dataclasses.replace(context(), interrupted=True), runs, {}, tmp_path)
    assert "min in all.\n\n**Interrupted**: this report covers only the runs that finished before.\n\n" in stopped


def test_writing_the_report_creates_the_plots_and_runs_json_it_can_be_written_again_from(
        runs: list[Any], tmp_path: Path) -> None:
    scaled = report.Run.from_output("pipeline", 1, {"figures": [], "meta": {
        "scale_out": {"workers": {"1": 1000, "2": 1800, "4": 2600}, "bridges": [[1, 500], [2, 900]]},
        "cdf": {"3 members @ 200/s": [[1.0, 0.5], [2.0, 0.99], [9.0, 1.0]]}}})

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gone-cdf.png").write_bytes(b"an earlier report's plot")
    path = report.write_report(context(), [*runs, scaled], tmp_path)

    assert path == tmp_path / report.REPORT_NAME
    plots = sorted(p.name for p in (tmp_path / "results").glob("*.png"))
    assert plots == ["latency-cdf.png", "pipeline-cdf.png", "pipeline-scale-out.png",
                     "ratios.png", "throughput.png"]
    assert all((tmp_path / "results" / name).read_bytes().startswith(b"\x89PNG") for name in plots)
    text = path.read_text()
    assert "![throughput](results/throughput.png)" in text
    assert "![pipeline pipeline-scale-out](results/pipeline-scale-out.png)" in text

    saved_context, saved_runs = report.load_runs(tmp_path / "results" / "runs.json")
    assert saved_runs == [*runs, scaled]
    assert report.render(saved_context, saved_runs, {}, tmp_path) == report.render(context(), [*runs, scaled],
                                                                                    {}, tmp_path)


def test_latency_samples_are_pooled_over_rounds_and_a_bench_without_them_has_no_curve(runs: list[Any]) -> None:
    curves = report.latency_curves([r for r in runs if r.bench == "latency"])

    assert curves == {"wake 1000/s": [(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]}
    assert report.latency_curves([r for r in runs if r.bench == "bridge"]) == {}
    # Nulls (infinitely late: never came) are left out, not an error.
    odd = report.Run.from_output("x", 1, {"figures": [], "meta": {"cdf": {"a": [[1.0, 0.5], [None, 1.0]]},
                                                                  "samples": {"b": [2.0, None], "c": 17}}})
    assert report.latency_curves([odd]) == {"a": [(1.0, 0.5)], "b": [(2.0, 1.0)]}


def test_scale_out_steps_are_ratios_to_each_rounds_first_step() -> None:
    rounds = [report.Run.from_output("pipeline", i, {"figures": [], "meta": {"scale_out": {"workers": steps}}})
              for i, steps in enumerate([{"1": 100, "2": 190}, [{"n": 1, "value": 200}, {"n": 2, "value": 300}]])]

    (series, steps), = report.scale_out_steps(rounds).items()

    assert series == "workers"
    assert [(n, s.median, s.low, s.high) for n, s in steps] == [(1.0, 1.0, 1.0, 1.0), (2.0, 1.7, 1.5, 1.9)]


def pipeline_round(round_: int, delivered: float, p99: float | None, workers2: float) -> Any:
    """The shape bench/pipeline.py writes: per-step figures, ``meta.ladders`` and ``meta.scale_out.points``."""
    def point(bridges: int, workers: int, gateways: int, notifications_s: float) -> dict[str, Any]:
        return {"layout": {"bridges": bridges, "workers": workers, "gateways": gateways},
                "notifications_s": notifications_s}

    steps = [{"target_msgs_s": 200, "offered_msgs_s": 200.0, "delivered_msgs_s": 200.0, "p50_ms": 2.0,
              "p99_ms": 9.0, "max_ms": 20.0, "samples": 1800, "cdf": [[2.0, 0.5], [9.0, 0.99], [20.0, 1.0]]},
             {"target_msgs_s": 4000, "offered_msgs_s": 3900.0, "delivered_msgs_s": delivered, "p50_ms": 40.0,
              "p99_ms": p99, "max_ms": None, "samples": 30000}]
    figures = [
        {"name": "pipeline.chat3.max_held_msgs_s", "value": 200.0, "unit": "msg/s", "baseline": None, "target": None},
        {"name": "pipeline.chat3.at4000.delivered_msgs_s", "value": delivered, "unit": "msg/s", "baseline": None,
         "target": None},
        {"name": "pipeline.chat3.at4000.p99_ms", "value": p99, "unit": "ms", "baseline": None, "target": "<= 50"},
    ]
    points = {"workers=1": point(1, 1, 1, 1000.0), "workers=2": point(1, 2, 1, workers2),
              "workers=4": point(1, 4, 1, 2500.0), "bridges=2 (w=2)": point(2, 2, 1, workers2 * 1.1),
              "gateways=2 (w=2)": point(1, 2, 2, workers2 * 0.9)}
    meta = {"ladders": [{"chat_size": 3, "steps": steps}], "scale_out": {"points": points, "ratios": []}}
    return report.Run.from_output("pipeline", round_, {"figures": figures, "meta": meta})


def test_pipeline_ladders_and_scale_out_runs_become_load_steps_and_series() -> None:
    rounds = [pipeline_round(1, 2000.0, None, 1800.0), pipeline_round(2, 2600.0, 400.0, 2000.0)]

    (label, steps), = report.load_steps(rounds).items()
    assert label == "chats of 3"
    assert [(s.rate, s.delivered.median, s.p99.median if s.p99 else None) for s in steps] == [
        (200.0, 200.0, 9.0), (4000.0, 2300.0, 400.0)]
    assert steps[1].p99.n == 1 and steps[1].max is None  # an infinite (null) p99 or max is not a number

    series = {name: [(n, round(s.median, 3)) for n, s in points] for name, points in
              report.scale_out_steps(rounds).items()}
    assert series == {"workers": [(1.0, 1.0), (2.0, 1.9), (4.0, 2.5)],
                      "bridges (w=2)": [(1.0, 1.0), (2.0, 1.1)], "gateways (w=2)": [(1.0, 1.0), (2.0, 0.9)]}

    assert report.latency_curves(rounds) == {"chats of 3, 200 msg/s": [(2.0, 0.5), (9.0, 0.99), (20.0, 1.0)]}
    # The throughput bars leave the per-step figures to the load-step plot.
    rates = report.throughput_summaries(report.aggregate(rounds))
    assert [s.name for s in rates["pipeline"]] == ["pipeline.chat3.max_held_msgs_s"]


def test_the_pipeline_plots_are_written(tmp_path: Path) -> None:
    rounds = [pipeline_round(1, 2000.0, None, 1800.0), pipeline_round(2, 2600.0, 400.0, 2000.0)]

    plots = report.write_plots(rounds, tmp_path)

    assert sorted(p.name for p in plots["pipeline"]) == ["pipeline-cdf.png", "pipeline-load-steps.png",
                                                          "pipeline-scale-out.png"]
    assert [p.name for p in plots[""]] == ["throughput.png"]


def fake_bench(tmp_path: Path, body: str) -> Any:
    script = tmp_path / "fake_bench.py"
    script.write_text(textwrap.dedent(body))
    return run_all.Bench("fake", str(script))


def options(**overrides: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"quick": True, "seed": 7, **overrides})


def test_run_all_collects_what_a_bench_wrote_with_its_arguments(tmp_path: Path) -> None:
    bench = fake_bench(tmp_path, """
        import json, sys
        args = sys.argv[1:]
        path = args[args.index("--json") + 1]
        figures = [{"name": "args", "value": len(args), "unit": "", "baseline": None, "target": None}]
        json.dump({"figures": figures, "meta": {"argv": args}}, open(path, "w"))
    """)

    run = run_all.run_one(bench, 2, options(), tmp_path)

    assert not run.failed and run.exit_code == 0 and run.round == 2
    assert run.meta["argv"][:3] == ["--quick", "--seed", "7"]


def test_run_all_records_a_failing_bench_with_the_tail_of_its_stderr(tmp_path: Path) -> None:
    bench = fake_bench(tmp_path, """
        import sys
        for n in range(40):
            print(f"line {n}", file=sys.stderr)
        sys.exit(3)
    """)

    run = run_all.run_one(bench, 1, options(), tmp_path)

    assert run.failed and run.exit_code == 3 and run.error == "exit code 3"
    assert run.stderr_tail.splitlines() == [f"line {n}" for n in range(20, 40)]
    assert run.figures == []


def test_run_all_stops_a_bench_past_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_all, "QUICK_TIMEOUT_S", 0.5)
    bench = fake_bench(tmp_path, "import time\ntime.sleep(60)\n")

    run = run_all.run_one(bench, 1, options(), tmp_path)

    assert run.failed and run.exit_code is None and run.error.startswith("stopped after")


def test_run_all_stops_what_a_bench_left_running_and_says_so(tmp_path: Path) -> None:
    bench = fake_bench(tmp_path, """
        import json, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        args = sys.argv[1:]
        json.dump({"figures": [], "meta": {}}, open(args[args.index("--json") + 1], "w"))
    """)

    run = run_all.run_one(bench, 1, options(), tmp_path)

    assert run.failed and run.error.startswith("left 1 process(es) running, stopped now: ")
    assert len(run.meta["left_behind"]) == 1
    pid = int(run.meta["left_behind"][0].split()[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def test_run_all_rejects_an_unknown_bench_name() -> None:
    with pytest.raises(SystemExit):
        run_all._arguments(["--only", "bridge,nope"])
    assert [b.name for b in run_all._arguments(["--only", "latency,bridge"]).benches] == ["bridge", "latency"]


def test_a_bench_json_with_nan_counts_as_not_measured() -> None:
    document = json.loads('{"figures": [{"name": "recover_max_s", "value": NaN, "unit": "s"}]}')
    run = report.Run.from_output("chaos", 1, document)

    assert run.figures[0].value is None
    assert by_name(report.aggregate([run])["chaos"])["recover_max_s"].value is None
