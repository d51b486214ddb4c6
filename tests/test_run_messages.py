"""What a run says, end to end through the real CLI against the emulator: failures by class
with an example and the command that re-drives them, a rerun that finds nothing to send,
skipped invalid lines, the start line, ISO date-times in logs; and what it leaves on disk
when it cannot start (nothing)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batch.cli.run import retry_command
from batch.emulator import RunningEmulator, profile, serve_emulator

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from batch.cli import main; main()"]
ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=7, answer_tokens_min=2, answer_tokens_max=4)) as emu:
        yield emu


def _env(emu: RunningEmulator | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    if emu is not None:
        env.update(emu.client_env())
    return env


def gigabatch(emu: RunningEmulator | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=_env(emu), capture_output=True, text=True, timeout=120)


def jobs_file(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def with_failures(path: Path) -> Path:
    """Four jobs: two answered, two naming a model the server does not have (404)."""
    return jobs_file(
        path,
        [
            {"id": "ok-1", "prompt": "hello"},
            {"id": "bad-1", "prompt": "hello", "model": "NoSuchModel"},
            {"id": "ok-2", "prompt": "world"},
            {"id": "bad-2", "prompt": "world", "model": "NoSuchModel"},
        ],
    )


def test_summary_gives_failures_by_class_with_an_example_and_the_retry_command(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = with_failures(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    proc = gigabatch(emulator, "run", str(jobs), "--out", str(out), "--max-concurrency", "4")
    assert proc.returncode == 3, proc.stderr
    err = proc.stderr
    assert "failed_rows: 2 succeeded, 2 failed; re-drive them with --retry-failed" in err
    assert f"failed rows by error class (in {out / 'failed'}/):" in err
    assert re.search(r"    NotFound: 2, e\.g\. id 'bad-\d': \S", err), err
    command = f"gigabatch run {jobs} --out {out} --max-concurrency 4 --retry-failed"
    assert f"  re-drive them: {command}" in err
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["failures"]["NotFound"]["count"] == 2

    # The printed command is one a shell runs as it is: it sends the two failed jobs again.
    again = gigabatch(emulator, *shlex.split(command)[1:])
    assert again.returncode == 3, again.stderr
    assert "(this run: 0 succeeded, 2 failed)" in again.stderr


def test_a_rerun_with_only_failed_rows_says_nothing_was_left_and_how_to_redrive(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = with_failures(tmp_path / "jobs.jsonl")
    out = str(tmp_path / "out")
    assert gigabatch(emulator, "run", str(jobs), "--out", out).returncode == 3
    rerun = gigabatch(emulator, "run", str(jobs), "--out", out)
    assert rerun.returncode == 3
    first = rerun.stderr.splitlines()[1]  # after the start line
    assert first == (
        "failed_rows: nothing left to send: all 4 jobs were answered before, "
        "2 failed; re-drive them with --retry-failed"
    )
    assert "re-drive them: gigabatch run" in rerun.stderr


def test_skipped_invalid_lines_are_in_the_summary_not_hidden_behind_all_succeeded(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "hi"}\nnot json\n{"id": "b", "temperature": 0}\n')
    out = tmp_path / "out"
    proc = gigabatch(emulator, "run", str(jobs), "--out", str(out), "--skip-invalid")
    assert proc.returncode == 0, proc.stderr
    assert "completed: all 1 jobs succeeded; 2 invalid lines skipped" in proc.stderr
    assert f"  invalid: 2 lines skipped (--skip-invalid), listed in {out / 'invalid.jsonl'}" in (
        proc.stderr
    )
    assert "2 invalid skipped" in proc.stderr.splitlines()[0]  # the start line says it too
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["jobs"]["invalid_skipped"] == 2


def test_the_log_starts_with_a_dated_line_naming_what_runs_with_which_settings(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = jobs_file(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    out = tmp_path / "out"
    proc = gigabatch(
        emulator,
        "run", str(jobs), "--out", str(out), "--max-concurrency", "8", "--max-cost", "5",
        "--model", "GigaChat-Pro",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    start = proc.stderr.splitlines()[0]
    assert re.fullmatch(
        ISO + re.escape(
            f" start: {jobs} (1 jobs) -> {out} | kind chat, model GigaChat-Pro | "
            "concurrency ceiling 8 | budget 5.00 RUB"
        ),
        start,
    ), start


def test_a_run_without_credentials_says_what_to_set_and_creates_nothing(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    out = tmp_path / "out"
    proc = gigabatch(None, "run", str(jobs), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no credentials: set GIGACHAT_CREDENTIALS")
    assert len(proc.stderr.splitlines()) == 1
    assert not out.exists()
    piped = subprocess.run(
        [*CLI, "run", "-", "--out", str(out)],
        input=jobs.read_text(),
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 2 and not out.exists()  # not even the spool of standard input


def test_models_and_balance_rehearse_on_the_emulator(tmp_path: Path) -> None:
    models = gigabatch(None, "models", "--emulator", "--json")
    assert models.returncode == 0, models.stderr
    assert "GigaChat" in {m["id"] for m in orjson.loads(models.stdout)}
    balance = gigabatch(
        None, "balance", "--emulator", "--emulator-option", "balance_tokens=1000", "--json"
    )
    assert balance.returncode == 0, balance.stderr
    assert orjson.loads(balance.stdout)


def test_status_shows_failures_by_class(emulator: RunningEmulator, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    jobs = with_failures(tmp_path / "jobs.jsonl")
    assert gigabatch(emulator, "run", str(jobs), "--out", out).returncode == 3
    status = gigabatch(None, "status", out)
    assert re.search(r"  failed NotFound: 2, e\.g\. id 'bad-\d': \S", status.stdout), status.stdout
    data = orjson.loads(gigabatch(None, "status", out, "--json").stdout)
    assert data["failures"]["NotFound"]["count"] == 2


def test_the_retry_command_leaves_out_restart_and_secrets_and_reads_a_spooled_stdin() -> None:
    spool = Path("out/input/stdin.jsonl")
    args = ["run", "-", "--out", "out", "--restart", "--credentials", "SECRET", "--password=P"]
    assert retry_command(args, Path("-"), spool) == (
        "gigabatch run out/input/stdin.jsonl --out out --retry-failed"
    )


def test_an_output_that_cannot_be_created_is_one_line_before_anything_is_written(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = jobs_file(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = gigabatch(emulator, "run", str(jobs), "--out", str(blocker / "out"))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot create {blocker / 'out'}: Not a directory")
    assert "(ENOTDIR)" in lines[0]
