"""The engine end to end in-process, with a fake job kind and a fake client."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, cast

import anyio
import pyarrow.dataset as ds
import pytest
from engine_fakes import FakeClient, FakeKind, write_jobs

from batch.api_types import Usage
from batch.errors import AuthenticationFailed, JobFileError, RunRefused
from batch.retry import RetryPolicy
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.summary import RunSummary
from jobs.base import JobKind

FAST_RETRY = RetryPolicy(max_attempts=3, initial=0.001, max_wait=0.01, jitter=0.001)


def config(
    jobs: Path, out: Path, client: FakeClient, kind: FakeKind | None = None, **kw: Any
) -> RunConfig:
    base: dict[str, Any] = {
        "retry": FAST_RETRY,
        "progress": "off",
        "handle_signals": False,
        "flush_interval": 0.05,
        "max_concurrency": 4,
    }
    base.update(kw)
    return RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=cast(JobKind, kind or FakeKind()),
        client_factory=cast(Any, lambda: client),
        **base,
    )


def run(cfg: RunConfig) -> RunSummary:
    return anyio.run(run_jobs, cfg)


def ids_in(out: Path, sub: str) -> list[str]:
    if not any((out / sub).glob("part-*.parquet")):
        return []
    return sorted(ds.dataset(out / sub).to_table(columns=["id"]).column("id").to_pylist())


def test_every_job_is_answered_once_into_results(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(50)])
    summary = run(config(jobs, tmp_path / "out", FakeClient(), FakeKind(batch_size=3)))
    assert summary.status == "completed"
    assert ids_in(tmp_path / "out", "results") == sorted(f"j{i}" for i in range(50))
    table = ds.dataset(tmp_path / "out" / "results").to_table()
    row = table.filter(ds.field("id") == "j7").to_pylist()[0]
    assert row["answer"] == "T7" and row["attempts"] == 1 and row["latency_ms"] >= 0


def test_permanent_error_fails_the_batch_rows_and_run_goes_on(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "bad", "c"])
    summary = run(config(jobs, tmp_path / "out", FakeClient()))
    assert summary.status == "failed_rows"
    failed = ds.dataset(tmp_path / "out" / "failed").to_table().to_pylist()
    assert [(r["id"], r["error_class"], r["status"], r["request_id"]) for r in failed] == [
        ("j1", "BadRequest", 400, "req-1")
    ]
    assert ids_in(tmp_path / "out", "results") == ["j0", "j2"]


def test_retryable_error_is_retried_and_counted(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["flaky"])
    summary = run(config(jobs, tmp_path / "out", FakeClient()))
    assert summary.status == "completed"
    row = ds.dataset(tmp_path / "out" / "results").to_table().to_pylist()[0]
    assert row["attempts"] == 2
    assert summary.data["retries"] == 1


def test_fatal_error_stops_the_run_and_keeps_what_was_answered(tmp_path: Path) -> None:
    texts = ["a", "b", "fatal"] + [f"t{i}" for i in range(200)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts)
    summary = run(config(jobs, tmp_path / "out", FakeClient(), max_concurrency=1))
    assert summary.status == "fatal"
    assert "token rejected" in summary.message
    assert ids_in(tmp_path / "out", "results") == ["j0", "j1"]
    assert ids_in(tmp_path / "out", "failed") == []


def test_resume_skips_done_ids_and_sends_only_the_rest(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b", "c", "d"])
    out = tmp_path / "out"

    def reject_c(texts: list[str]) -> None:
        if "c" in texts:
            raise AuthenticationFailed("token rejected", status=401)

    first = run(config(jobs, out, FakeClient(hook=reject_c), max_concurrency=1))
    assert first.status == "fatal"
    client = FakeClient()
    summary = run(config(jobs, out, client, max_concurrency=1))
    assert [texts for _, texts in client.calls] == [["c"], ["d"]]
    assert summary.status == "completed"
    assert ids_in(out, "results") == ["j0", "j1", "j2", "j3"]


def test_changed_input_is_refused_on_resume_naming_the_change(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    out = tmp_path / "out"
    run(config(jobs, out, FakeClient()))
    write_jobs(jobs, ["a", "b", "c"])
    with pytest.raises(RunRefused, match="input file changed"):
        run(config(jobs, out, FakeClient()))


def test_changed_answer_setting_is_refused_unless_restart(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    out = tmp_path / "out"
    run(config(jobs, out, FakeClient()))
    with pytest.raises(RunRefused, match="model: 'Fake' -> 'Other'"):
        run(config(jobs, out, FakeClient(), FakeKind(model="Other")))
    summary = run(config(jobs, out, FakeClient(), FakeKind(model="Other"), restart=True))
    assert summary.data["jobs"]["this_run"]["succeeded"] == 2


def test_invalid_input_is_refused_before_any_request(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": 5}\n')
    client = FakeClient()
    with pytest.raises(JobFileError) as info:
        run(config(jobs, tmp_path / "out", client))
    assert "line 2" in str(info.value.problems[0])
    assert client.calls == []


def test_duplicate_ids_are_refused_before_any_request(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["x", "y"], ids=["same", "same"])
    client = FakeClient()
    with pytest.raises(JobFileError, match="duplicate id"):
        run(config(jobs, tmp_path / "out", client))
    assert client.calls == []


def test_skip_invalid_runs_the_rest_and_lists_skipped_lines(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": 5}\nnot json\n')
    summary = run(config(jobs, tmp_path / "out", FakeClient(), skip_invalid=True))
    assert summary.status == "completed"
    skipped = [json.loads(line) for line in (tmp_path / "out" / "invalid.jsonl").open()]
    assert [s["line"] for s in skipped] == [2, 3]
    assert ids_in(tmp_path / "out", "results") == ["a"]


def test_retry_failed_sends_failed_ids_again(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "bad"])
    out = tmp_path / "out"
    run(config(jobs, out, FakeClient()))
    assert ids_in(out, "failed") == ["j1"]
    client = FakeClient()
    summary = run(config(jobs, out, client, retry_failed=True))
    assert [texts for _, texts in client.calls] == [["bad"]]
    assert ids_in(out, "failed") == ["j1"]  # failed again, once, in the new failed/
    assert (out / "superseded" / "failed-1").is_dir()
    assert summary.status == "failed_rows"


def test_job_filter_leaves_jobs_pending(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b", "c"])
    run(config(jobs, tmp_path / "out", FakeClient(), job_filter=lambda job: job.id != "j1"))
    assert ids_in(tmp_path / "out", "results") == ["j0", "j2"]


def test_budget_stops_before_crossing_and_says_what_was_spent(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(20)])
    summary = run(config(jobs, tmp_path / "out", FakeClient(), max_tokens=60))
    assert summary.status == "budget"
    assert "spent" in summary.message and "left" in summary.message
    # Each job reserves 20 tokens and is billed 5: never more than 60 spent.
    assert summary.data["tokens"]["fake"]["total"] <= 60
    assert len(ids_in(tmp_path / "out", "results")) < 20


def test_429_with_retry_after_pauses_every_worker(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(40)])
    client = FakeClient(latency=0.01, stream_limit=2, retry_after=0.1)
    summary = run(config(jobs, tmp_path / "out", client, max_concurrency=8))
    assert summary.status == "completed"
    assert client.rejected and summary.data["rate_limited"] == len(client.rejected)
    assert summary.data["concurrency"]["server_limit_found"] is True
    sent = [t for t, _ in client.calls]
    for start in client.rejected:
        assert not [t for t in sent if start < t < start + 0.1]


def test_workers_never_exceed_max_concurrency(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(200)])
    client = FakeClient(latency=0.005)
    summary = run(config(jobs, tmp_path / "out", client, max_concurrency=3))
    assert client.peak <= 3
    assert summary.data["concurrency"]["max"] == 3


def test_summary_says_when_no_429_showed_the_servers_limit(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(24)])
    summary = run(config(jobs, tmp_path / "out", FakeClient(latency=0.002), max_concurrency=64))
    assert summary.data["concurrency"]["server_limit_found"] is False
    printed = io.StringIO()
    summary.print(printed)
    assert "the server refused none" in printed.getvalue()


def test_summary_json_is_written_with_counts(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "bad"])
    run(config(jobs, tmp_path / "out", FakeClient()))
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["jobs"]["succeeded"] == 1 and data["jobs"]["failed"] == 1
    assert data["status"] == "failed_rows"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["succeeded"] == 1 and manifest["settings"]["model"] == "Fake"


class NoUsageKind(FakeKind):
    """Answers whose usage the API left out."""

    def outcomes(self, batch: Any, body: Any) -> Any:
        return [
            dataclasses.replace(outcome, usage=Usage(), usage_known=False)
            for outcome in super().outcomes(batch, body)
        ]


def test_an_answer_without_usage_counts_at_its_ceiling_not_as_free(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t{i}" for i in range(6)])
    summary = run(config(jobs, tmp_path / "out", FakeClient(), NoUsageKind(), max_tokens=1000))
    assert summary.status == "completed"
    # FakeKind reserves 10 prompt + 10 completion tokens a job.
    assert summary.data["tokens"]["fake"]["total"] == 6 * 20
    assert summary.data["unknown_usage"] == 6
    out = io.StringIO()
    summary.print(out)
    assert "6 answers came without a readable usage" in out.getvalue()
