"""`--out URI`: an output on a pyarrow filesystem. A `file://` URI through the real CLI
(kill -9, resume, `status`), and an object-store-like filesystem with no rename through
`batch.run` (a crash between a part and the manifest that names it, --retry-failed,
--restart); every id exactly once, the results one dataset; credentials never shown."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from test_e2e_resilience import wait_for
from test_e2e_run import FAST, chat_jobs, gigabatch, start

import batch
from batch.checkpoint import read_status
from batch.cli.run import retry_command
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.errors import ConfigError, OutputError
from batch.output_uri import OutputURI, is_uri, scrub, shown_uri
from batch.part_store import ObjectParts, PartStore

SECRET = "wJalrXUtnFEMIsEcReT"
KEY = "AKIAEXAMPLEKEY"


class ObjectStoreLike(pafs.FileSystemHandler):
    """A directory seen as an object store: no rename (`move` raises), objects written as
    they are streamed. `crash_after_parts` makes the store unreachable from the first
    manifest PUT after that many parts, as if the process died between the two PUTs."""

    def __init__(self, root: Path, crash_after_parts: int | None = None) -> None:
        self.fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
        self.crash_after_parts = crash_after_parts
        self.parts_written = 0
        self.dead = False

    def _alive(self) -> None:
        if self.dead:
            raise OSError("the store is unreachable")

    def get_type_name(self) -> str:
        return "objectstorelike"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        self._alive()
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        self._alive()
        return list(self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self._alive()
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._alive()
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._alive()
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("not on this store")

    def delete_file(self, path: str) -> None:
        self._alive()
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        raise OSError("an object store has no rename")

    def copy_file(self, src: str, dest: str) -> None:
        self._alive()
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        self._alive()
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        self._alive()
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self._alive()
        if "/part-" in path:
            self.parts_written += 1
        elif "manifest" in path and self.crash_after_parts is not None:
            self.dead = self.parts_written >= self.crash_after_parts
            self._alive()
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        raise OSError("an object store cannot append")


def emulator_options(emu: RunningEmulator) -> dict[str, Any]:
    return {
        "base_url": emu.base_url,
        "auth_url": emu.auth_url,
        "credentials": emu.credentials,
        "scope": emu.scope,
        "progress": "off",
    }


@pytest.fixture
def slow_emulator() -> Iterator[RunningEmulator]:
    # 20 ms answers over 4 streams: a 200-job run commits several parts at 0.05 s flushes.
    with serve_emulator(profile("b2b", stream_limit=4, **{**FAST, "latency_base_ms": 20.0})) as e:
        yield e


def result_ids(filesystem: pafs.FileSystem, sub: str = "results") -> list[str]:
    table = ds.dataset(f"out/{sub}", filesystem=filesystem, format="parquet").to_table()
    return [str(i) for i in table.column("id").to_pylist()]


def named_parts(root: Path) -> set[str]:
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    return {p["path"] for p in manifest["parts"]}


def stored_parts(root: Path) -> set[str]:
    out = root / "out"
    return {p.relative_to(out).as_posix() for p in out.glob("*/part-*.parquet")}


def test_a_uri_is_told_from_a_path_and_shown_without_credentials() -> None:
    assert is_uri("s3://bucket/run") and is_uri("file:///tmp/x")
    assert not is_uri("out/chat") and not is_uri(Path("s3:/bucket"))
    uri = f"s3://{KEY}:{SECRET}@bucket/run?region=eu&secret_key={SECRET}x"
    assert shown_uri(uri) == "s3://bucket/run?region=eu"
    message = scrub(f"cannot open {uri}: denied for {KEY}", uri)
    assert SECRET not in message and KEY not in message


def test_the_retry_command_shows_an_out_uri_without_its_credentials() -> None:
    uri = f"s3://{KEY}:{SECRET}@bucket/run"
    jobs = Path("jobs.jsonl")
    line = retry_command(["run", "jobs.jsonl", "--out", uri], jobs, jobs)
    assert line == "gigabatch run jobs.jsonl --out s3://bucket/run --retry-failed"


def test_an_unknown_scheme_is_one_line_naming_the_uri_and_sending_nothing(
    slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 5)
    code, err = gigabatch(slow_emulator, "run", str(jobs), "--out", f"nope://{KEY}:{SECRET}@b/x")
    assert code != 0
    assert err.strip().splitlines() == [err.strip()]
    assert "nope://b/x" in err and "s3://" in err, err
    assert SECRET not in err and KEY not in err
    assert not slow_emulator.stats()["requests"].get("/api/v1/chat/completions")


def test_an_unreachable_store_is_one_line_without_its_credentials(
    slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 5)
    uri = f"s3://{KEY}:{SECRET}@bucket/run?endpoint_override=127.0.0.1:9&scheme=http&region=eu"
    with pytest.raises(OutputError) as caught:
        batch.run(jobs, uri, state_dir=tmp_path / "state", **emulator_options(slow_emulator))
    message = str(caught.value)
    assert message.startswith("cannot write --out s3://bucket/run?") and "\n" not in message
    assert SECRET not in message and KEY not in message and "credentials" in message
    assert not slow_emulator.stats()["requests"].get("/api/v1/chat/completions")


def test_a_local_out_takes_no_state_dir(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 1)
    with pytest.raises(ConfigError, match="--state-dir is for an --out URI"):
        batch.run(jobs, tmp_path / "out", state_dir=tmp_path / "state", emulator=True)


def test_a_file_uri_resumes_after_kill_9_with_every_id_once_and_status_reads_it(
    slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 200)
    uri = (tmp_path / "out").as_uri()
    args = ("run", str(jobs), "--out", uri, "-q", "--flush-interval", "0.05")
    state = ("--state-dir", str(tmp_path / "state"))
    proc = start(slow_emulator, *args, *state)
    wait_for(lambda: len(list((tmp_path / "out").glob("results/part-*.parquet"))) > 1)
    proc.kill()
    proc.wait()
    assert (tmp_path / "state" / "gigabatch.lock").exists()  # the lock is local, not in the URI
    code, err = gigabatch(slow_emulator, *args, *state)
    assert code == 0, err
    ids = ds.dataset(f"{uri}/results").to_table(columns=["id"]).column("id").to_pylist()
    assert Counter(ids) == Counter(expected)
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["out"] == uri
    code, out_err = gigabatch(slow_emulator, "status", uri)
    assert code == 0, out_err
    code, out_err = gigabatch(slow_emulator, "report", uri)
    assert code == 0, out_err
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"gigabatch run: {uri}<" in page and "200 jobs succeeded" in page


def test_a_crash_between_a_part_and_its_manifest_sends_that_part_again_exactly_once(
    slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 200)
    crashing = ObjectStoreLike(tmp_path, crash_after_parts=2)
    options = {**emulator_options(slow_emulator), "flush_interval": 0.05}
    with pytest.raises(OutputError, match="could not be committed"):
        batch.run(jobs, "out", filesystem=pafs.PyFileSystem(crashing), **options)
    orphans = stored_parts(tmp_path) - named_parts(tmp_path)
    assert orphans  # the part the manifest never named
    healthy = pafs.PyFileSystem(ObjectStoreLike(tmp_path))
    summary = batch.run(jobs, "out", filesystem=healthy, **options)
    assert summary.status == "completed"
    assert not orphans & stored_parts(tmp_path)
    assert stored_parts(tmp_path) == named_parts(tmp_path)
    assert Counter(result_ids(healthy)) == Counter(expected)
    manifest, totals = read_status(_store(healthy))
    assert totals.succeeded == 200 and manifest["total_jobs"] == 200


def _store(filesystem: pafs.FileSystem) -> PartStore:
    return ObjectParts(OutputURI(filesystem, "out", "objectstorelike://out", Path("unused")))


def test_a_manifest_torn_by_a_crash_is_read_from_its_whole_copy(tmp_path: Path) -> None:
    store = _store(pafs.PyFileSystem(ObjectStoreLike(tmp_path)))
    (tmp_path / "out").mkdir()
    store.write_manifest(b'{"parts": [], "total_jobs": 1}')
    (tmp_path / "out" / "manifest.json").write_bytes(b'{"parts": [')  # torn mid-write
    assert store.read_manifest() == {"parts": [], "total_jobs": 1}
    (tmp_path / "out" / ".manifest.next.json").write_bytes(b"{")
    with pytest.raises(OutputError, match=r"manifest\.json is damaged"):
        store.read_manifest()


def test_retry_failed_and_restart_work_without_rename(
    slow_emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 40, bad_every=10)
    store = pafs.PyFileSystem(ObjectStoreLike(tmp_path))
    options = {**emulator_options(slow_emulator), "check": False}
    first = batch.run(jobs, "out", filesystem=store, **options)
    assert first.status == "failed_rows" and len(result_ids(store, "failed")) == 4
    again = batch.run(jobs, "out", filesystem=store, retry_failed=True, **options)
    assert again.status == "failed_rows"
    assert list((tmp_path / "out" / "superseded" / "failed-1").glob("part-*.parquet"))
    assert Counter(result_ids(store) + result_ids(store, "failed")) == Counter(expected)
    batch.run(jobs, "out", filesystem=store, restart=True, **options)
    assert not (tmp_path / "out" / "superseded").exists()
    assert Counter(result_ids(store) + result_ids(store, "failed")) == Counter(expected)
