"""The peer benchmark's helpers on canned inputs: what counts as a line of user code, how
output rows and emulator stats are read, and how the goals are judged and printed."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.peers.__main__ import knobs
from bench.peers.child import run_child
from bench.peers.contenders import CONTENDERS, KINDS, SCRIPTS, Contender, code_lines
from bench.peers.measure import (
    duplicated_rows,
    inside_windows,
    output_ids,
    sending_window,
    taken_on,
)
from bench.peers.report import COLUMNS, markdown_table, row, verdicts
from bench.peers.scenarios import CrashRun, FaultRun, Outcome, Plan, StormRun, Throughput


def _outcome(lost: int = 0, duplicates: int = 0) -> Outcome:
    return Outcome(answered=100 - lost, lost=lost, duplicates=duplicates, wall_s=1.0,
                   cpu_s=1.0, exit_code=0, requests={"200": 100}, stderr_tail="")


def test_code_lines_leave_out_docstrings_comments_and_blank_lines() -> None:
    source = '"""Module doc,\non two lines."""\n\nimport sys\n\n\ndef f() -> None:\n' \
             '    """Doc."""\n    # why\n    print(sys.argv,\n          1)\n'
    assert code_lines(source) == 4  # import, def, and the print over two lines


def test_every_peer_script_counts_its_lines() -> None:
    for who in CONTENDERS:
        if who.scripts:
            assert all(n and n > 10 for n in (who.user_lines(k) for k in who.scripts))
    assert Contender("gigabatch").user_lines("chat") == 1


def test_output_ids_read_parquet_parts_and_jsonl_but_no_torn_line(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"]}), tmp_path / "results" / "part-0.parquet")
    pq.write_table(pa.table({"id": ["z"]}), tmp_path / "results" / "part-1.tmp")
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"id": "b", "answer": "x"}) + "\n" + '{"id": "c", "ans'
    )
    ids = output_ids(tmp_path)
    assert sorted(ids) == ["a", "b", "b"]
    assert duplicated_rows(ids) == 1


def test_inside_windows_counts_api_arrivals_after_the_in_flight_slack() -> None:
    stats: dict[str, Any] = {
        "retry_after_windows": [{"start": 10.0, "end": 12.0}],
        "arrivals": [
            {"t": 10.01, "path": "/api/v1/chat/completions", "status": 429},  # in flight
            {"t": 11.0, "path": "/api/v1/chat/completions", "status": 429},
            {"t": 11.5, "path": "/api/v2/oauth", "status": 200},
            {"t": 12.5, "path": "/api/v1/chat/completions", "status": 200},
        ],
    }
    assert inside_windows(stats) == 1


def test_sending_window_runs_from_first_arrival_to_last_answer() -> None:
    stats = {
        "mean_latency_s": 0.5,
        "arrivals": [{"t": t, "path": "/api/v1/embeddings", "status": 200} for t in (3, 4, 7)],
    }
    assert sending_window(stats, "embed") == pytest.approx(4.5)
    assert sending_window(stats, "chat") == 0.0


def test_taken_on_leaves_out_refused_requests() -> None:
    assert taken_on({"200": 90, "0": 3, "429": 40, "500": 2}) == 95


def test_knobs_parse_numbers_and_words() -> None:
    assert knobs("fault_5xx=0.01, retry_after=none,") == {
        "fault_5xx": 0.01, "retry_after": "none"
    }


def _results(ours_rate: float, peer_lost: int, ours_repaid: int) -> dict[str, dict[str, Any]]:
    def clean(rate: float, cpu: float) -> Throughput:
        return Throughput(jobs_per_s=rate, cpu_per_1000=cpu, tokens=1000, run=_outcome())

    return {
        "chat": {"gigabatch": clean(ours_rate, 0.5), "SDK expert": clean(10.0, 1.0)},
        "chat_faults": {
            "gigabatch": FaultRun(9.0, _outcome()),
            "SDK expert": FaultRun(9.0, _outcome(lost=peer_lost)),
        },
        "storm": {
            "gigabatch": StormRun(inside=0, windows=3, run=_outcome()),
            "SDK expert": StormRun(inside=20, windows=3, run=_outcome()),
        },
        "crash": {
            "gigabatch": CrashRun(1.1, ours_repaid, 50, 50 - ours_repaid, True, _outcome()),
            "SDK expert": CrashRun(1.5, 50, 50, 0, True, _outcome()),
        },
    }


def test_goals_met_when_gigabatch_alone_passes() -> None:
    found = {v.goal.split(",")[0]: v for v in verdicts(_results(10.5, 2, 8), limit=10)}
    assert found["chat throughput ≥ 1.0× the best peer's"].met is True
    assert found["chat CPU ≤ 0.6× the SDK scripts'"].met is True
    assert found["under faults"].met is True
    assert found["in a 429 storm"].met is True
    assert found["after kill -9"].met is True
    assert found["embed throughput ≥ 1.0× the best peer's"].met is None  # not run


def test_goals_say_missed_when_a_peer_ties_or_gigabatch_falls_short() -> None:
    found = {v.goal.split(",")[0]: v for v in verdicts(_results(9.0, 0, 30), limit=10)}
    assert found["chat throughput ≥ 1.0× the best peer's"].met is False
    assert "0.90× SDK expert" in found["chat throughput ≥ 1.0× the best peer's"].figure
    faults = found["under faults"]
    assert faults.met is False and "not the only one: SDK expert" in faults.figure
    assert found["after kill -9"].met is False


def test_table_has_a_cell_per_column_and_says_why_a_peer_was_not_run() -> None:
    absent = Contender("absent", {"chat": "sdk_naive_chat.py"}, needs=("no_such_module_x",))
    table = markdown_table([*CONTENDERS, absent], _results(10.5, 2, 8)).splitlines()
    assert len(table) == 2 + len(CONTENDERS) + 1
    assert all(line.count("|") == len(COLUMNS) + 1 for line in table)
    assert row(absent, {})[1] == "not run: no_such_module_x missing (pip install -e '.[bench]')"


def test_ray_data_is_a_contender_with_a_script_per_kind_that_parses() -> None:
    ray = next(c for c in CONTENDERS if c.name == "Ray Data")
    assert set(ray.scripts) == set(KINDS) and set(ray.needs) == {"ray", "aiohttp"}
    for kind, script in ray.scripts.items():
        source = (SCRIPTS / script).read_text(encoding="utf-8")
        tree = ast.parse(source)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names}
        assert {"HttpRequestProcessorConfig", "build_processor"} <= imported, script
        assert "ray.init(num_cpus=2" in source, script
        command = ray.command(kind, Path("jobs.jsonl"), Path("out"), 10)
        assert command[1:] == [str(SCRIPTS / script), "jobs.jsonl", "out", "10"]
        assert (ray.user_lines(kind) or 0) > 10


def test_run_child_kills_with_sigkill_when_told(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    run = run_child(argv, {}, tmp_path / "log", timeout_s=20, kill_when=lambda: True)
    assert run.killed and run.exit_code == -9


def test_run_child_counts_the_cpu_of_processes_the_child_left_behind(tmp_path: Path) -> None:
    burn = "import time\nwhile time.process_time() < 0.5: pass"
    spawn = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {burn!r}])"
    run = run_child([sys.executable, "-c", spawn], {}, tmp_path / "log", timeout_s=20)
    assert run.exit_code == 0 and run.cpu_seconds >= 0.5


def test_run_child_kill_takes_descendants_in_sessions_of_their_own(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    spawn = (
        "import pathlib, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], "
        "start_new_session=True); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid)); time.sleep(30)"
    )
    run = run_child([sys.executable, "-c", spawn], {}, tmp_path / "log", timeout_s=20,
                    kill_when=lambda: bool(pid_file.exists() and pid_file.read_text()))
    assert run.killed and run.wall_seconds < 20
    assert not psutil.pid_exists(int(pid_file.read_text()))


def test_plan_gives_chat_its_latency_and_lets_the_fault_mix_override_any_knob() -> None:
    plan = Plan(chat_jobs=10, embed_jobs=10, chat_latency_ms=1000.0)
    assert plan.emulator("chat").latency_base_ms == 1000.0
    assert plan.emulator("embed").latency_base_ms == 100.0  # the b2b profile's
    faulty = plan.emulator("chat", {**plan.faults, "latency_base_ms": 5.0})
    assert faulty.latency_base_ms == 5.0 and faulty.retry_after == "none"
    assert faulty.effective_stream_limit == 10


def test_cpu_goal_is_not_judged_when_start_up_hides_the_per_job_cost() -> None:
    results = _results(10.5, 2, 8)
    results["chat"]["gigabatch"] = Throughput(10.5, -0.1, 1000, _outcome())
    cpu = next(v for v in verdicts(results, limit=10) if v.goal.startswith("chat CPU"))
    assert cpu.met is None and cpu.label == "not measured"
