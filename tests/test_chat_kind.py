"""The chat job kind: request bodies from lines, one request per job, rows from answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pyarrow as pa
import pytest

from batch.api_types import ChatCompletion, Usage
from batch.errors import ConfigError
from jobs.base import Batch, Job, JobResult, KindOptions, SourceLocation
from jobs.chat import DEFAULT_COMPLETION_RESERVE, ChatKind, ChatOptions, session_id
from jobs.embeddings import EmbeddingsKind
from jobs.registry import kind_for

HERE = SourceLocation("jobs.jsonl", 3)


class FakeChatClient:
    """Answers every request with a fixed completion and records what it was sent."""

    def __init__(self, *, finish_reason: str = "stop", function_call: Any = None) -> None:
        self.calls: list[tuple[Mapping[str, Any], str | None]] = []
        self.finish_reason = finish_reason
        self.function_call = function_call

    async def chat(
        self, body: Mapping[str, Any], *, session_id: str | None = None
    ) -> ChatCompletion:
        self.calls.append((body, session_id))
        return ChatCompletion(
            content="Ответ",
            finish_reason=self.finish_reason,
            model="GigaChat:2.0.28.2",
            usage=Usage(prompt_tokens=20, completion_tokens=5, precached_prompt_tokens=12),
            function_call=self.function_call,
        )


def _job(record: dict[str, Any], **options: Any) -> Job:
    return ChatKind(ChatOptions(**options)).job_from_record(record, HERE)


def _send(kind: ChatKind, client: FakeChatClient, job: Job) -> JobResult:
    async def go() -> JobResult:
        (outcome,) = await kind.send(client, Batch(jobs=[job]))
        assert isinstance(outcome, JobResult)
        return outcome

    return anyio.run(go)


def test_prompt_shorthand_follows_the_runs_system_message() -> None:
    job = _job({"id": "a", "prompt": "Привет"}, system="Будь краток.")
    assert job.request == {
        "model": "GigaChat",
        "messages": [
            {"role": "system", "content": "Будь краток."},
            {"role": "user", "content": "Привет"},
        ],
    }


def test_a_lines_system_replaces_the_runs() -> None:
    job = _job({"prompt": "Hi", "system": "Be formal."}, system="Be brief.")
    assert job.request["messages"][0] == {"role": "system", "content": "Be formal."}


def test_explicit_messages_are_sent_as_given() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    job = _job({"messages": messages}, system="Be brief.")
    assert job.request["messages"] == messages


def test_missing_id_becomes_the_line_number() -> None:
    assert _job({"prompt": "x"}).id == "3"


def test_line_settings_override_the_runs_defaults() -> None:
    job = _job(
        {"prompt": "x", "model": "GigaChat-Pro", "temperature": 0.2, "max_tokens": 50},
        model="GigaChat-Max",
        temperature=0.9,
        top_p=0.5,
        max_tokens=200,
        repetition_penalty=1.1,
    )
    assert {k: v for k, v in job.request.items() if k != "messages"} == {
        "model": "GigaChat-Pro",
        "temperature": 0.2,
        "top_p": 0.5,
        "max_tokens": 50,
        "repetition_penalty": 1.1,
    }


def test_run_model_is_the_default_model() -> None:
    assert _job({"prompt": "x"}, model="GigaChat-Pro").request["model"] == "GigaChat-Pro"


def test_functions_and_function_call_pass_into_the_body() -> None:
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]
    job = _job({"prompt": "x", "functions": functions, "function_call": {"name": "weather"}})
    assert job.request["functions"] == functions
    assert job.request["function_call"] == {"name": "weather"}


def test_metadata_is_carried_untouched() -> None:
    metadata = {"source": "crm", "tags": ["a", 1]}
    assert _job({"prompt": "x", "metadata": metadata}).metadata == metadata


def test_every_job_is_its_own_batch() -> None:
    kind = ChatKind(ChatOptions())
    packer = kind.packer()
    jobs = [kind.job_from_record({"prompt": str(i)}, HERE) for i in range(3)]
    assert [[b.jobs for b in packer.add(job)] for job in jobs] == [[[job]] for job in jobs]
    assert packer.flush() == []


def test_reservation_uses_max_tokens_and_overestimates_prompt() -> None:
    kind = ChatKind(ChatOptions())
    job = kind.job_from_record({"prompt": "слово " * 100, "max_tokens": 64}, HERE)
    usage = kind.reserve(Batch(jobs=[job]))
    assert usage.completion_tokens == 64
    # 600 characters are about 200 real tokens; the ceiling assumes a token per character.
    assert usage.prompt_tokens >= 600


def test_reservation_without_max_tokens_uses_the_documented_default() -> None:
    kind = ChatKind(ChatOptions())
    job = kind.job_from_record({"prompt": "x"}, HERE)
    assert kind.reserve(Batch(jobs=[job])).completion_tokens == DEFAULT_COMPLETION_RESERVE


def test_send_builds_the_result_row() -> None:
    kind = ChatKind(ChatOptions(system="S"))
    job = kind.job_from_record({"id": "q1", "prompt": "x", "metadata": {"k": "в"}}, HERE)
    client = FakeChatClient()
    result = _send(kind, client, job)
    assert client.calls == [(job.request, session_id(job.request))]
    assert result.row == {
        "content": "Ответ",
        "finish_reason": "stop",
        "model": "GigaChat:2.0.28.2",
        "prompt_tokens": 20,
        "completion_tokens": 5,
        "precached_prompt_tokens": 12,
        "total_tokens": 25,
        "metadata": '{"k":"в"}',
        "function_call": None,
    }
    assert result.usage == Usage(20, 5, 12)
    assert result.model == "GigaChat:2.0.28.2"


def test_blacklisted_answer_is_a_success_row() -> None:
    kind = ChatKind(ChatOptions())
    result = _send(kind, FakeChatClient(finish_reason="blacklist"), _job({"prompt": "x"}))
    assert result.row["finish_reason"] == "blacklist"


def test_function_call_answer_is_stored_as_json() -> None:
    call = {"name": "weather", "arguments": {"city": "Москва"}}
    client = FakeChatClient(function_call=call)
    result = _send(ChatKind(ChatOptions()), client, _job({"prompt": "x"}))
    assert result.row["function_call"] == '{"name":"weather","arguments":{"city":"Москва"}}'


def test_rows_fit_the_result_schema() -> None:
    kind = ChatKind(ChatOptions())
    result = _send(kind, FakeChatClient(), _job({"prompt": "x", "metadata": [1, 2]}))
    row = {"id": result.job.id, **result.row, "attempts": 1, "latency_ms": 12.5}
    table = pa.Table.from_pylist([row], schema=kind.result_schema())
    assert table.column("metadata").to_pylist() == ["[1,2]"]
    assert set(table.schema.names) == set(row)


def test_jobs_sharing_a_system_prompt_share_a_session() -> None:
    a = _job({"prompt": "one"}, system="Long shared instructions")
    b = _job({"prompt": "two"}, system="Long shared instructions")
    c = _job({"prompt": "one"}, system="Other instructions")
    assert session_id(a.request) == session_id(b.request)
    assert session_id(a.request) != session_id(c.request)


def test_session_depends_on_the_model() -> None:
    a = _job({"prompt": "x"}, system="S")
    b = _job({"prompt": "x", "model": "GigaChat-Pro"}, system="S")
    assert session_id(a.request) != session_id(b.request)


def test_no_system_prompt_means_no_session() -> None:
    assert session_id(_job({"prompt": "x"}).request) is None


def test_answer_settings_name_what_changes_answers() -> None:
    settings = ChatKind(ChatOptions(model="GigaChat-Pro", system="S", temperature=0.3))
    assert settings.answer_settings()["model"] == "GigaChat-Pro"
    assert settings.answer_settings()["system"] == "S"
    assert settings.answer_settings()["temperature"] == 0.3


def test_registry_builds_kinds_by_name() -> None:
    assert isinstance(kind_for("chat"), ChatKind)
    assert isinstance(kind_for("embed"), EmbeddingsKind)
    with pytest.raises(ConfigError, match="unknown job kind 'rerank'"):
        kind_for("rerank")


def test_plain_kind_options_build_any_kind_with_its_defaults() -> None:
    chat = kind_for("chat", KindOptions(model="GigaChat-Pro"))
    embed = kind_for("embed", KindOptions(text_column="body"))
    assert chat.answer_settings()["model"] == "GigaChat-Pro"
    assert embed.source_fields()["text"] == "body"
