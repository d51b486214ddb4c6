"""The emulator's native batch API over raw HTTP: create, status in both list shapes, the
500-line limit, per-task errors, results equal to the online answers, 404 and polling 429."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator

BATCHES = "/api/v1/batches"


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=5, batch_processing_s=0.3)) as running:
        yield running


def api(emu: RunningEmulator) -> httpx.Client:
    headers = {"Authorization": f"Bearer {emu.access_token()}"}
    return httpx.Client(base_url=emu.origin, headers=headers, trust_env=False)


def chat_request(prompt: str) -> dict[str, Any]:
    return {"model": "GigaChat", "messages": [{"role": "user", "content": prompt}]}


def jsonl(*tasks: Any) -> bytes:
    return b"".join(
        (task if isinstance(task, bytes) else orjson.dumps(task)) + b"\n" for task in tasks
    )


def create(client: httpx.Client, method: str, body: bytes) -> httpx.Response:
    return client.post(
        f"{BATCHES}?method={method}",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )


def wait_completed(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    for _ in range(100):
        [item] = client.get(BATCHES, params={"batch_id": batch_id}).json()["batches"]
        if item["status"] == "completed":
            return dict(item)
        time.sleep(0.05)
    raise AssertionError("batch never completed")


def submit_and_wait(client: httpx.Client, body: bytes) -> dict[str, Any]:
    return wait_completed(client, create(client, "chat_completions", body).json()["id"])


def results(client: httpx.Client, item: dict[str, Any]) -> dict[Any, Any]:
    response = client.get(f"/api/v1/files/{item['output_file_id']}/content")
    assert response.status_code == 200
    lines = [orjson.loads(line) for line in response.content.splitlines() if line]
    return {line["id"]: line for line in lines}


def test_create_answers_created_with_the_task_count(emu: RunningEmulator) -> None:
    with api(emu) as client:
        body = jsonl({"id": "a", "request": chat_request("hi")})
        answer = create(client, "chat_completions", body).json()
    assert answer["status"] == "created"
    assert answer["method"] == "chat_completions"
    assert answer["request_counts"] == {"total": 1}
    assert {"id", "created_at", "updated_at"} <= answer.keys()


def test_a_batch_moves_from_created_through_in_progress_to_completed() -> None:
    with serve_emulator(profile("fast", batch_processing_s=1.0)) as emu, api(emu) as client:
        tasks = [{"id": str(i), "request": chat_request(f"q{i}")} for i in range(10)]
        batch_id = create(client, "chat_completions", jsonl(*tasks)).json()["id"]
        seen = []
        for _ in range(60):
            [item] = client.get(BATCHES, params={"batch_id": batch_id}).json()["batches"]
            seen.append(item["status"])
            if item["status"] == "completed":
                break
            time.sleep(0.03)
    assert seen[0] == "created"
    assert "in_progress" in seen
    assert seen[-1] == "completed"
    assert item["request_counts"] == {"total": 10, "completed": 10, "failed": 0}


def test_chat_results_equal_the_online_answers(emu: RunningEmulator) -> None:
    prompts = [f"tell me about item {i}" for i in range(5)]
    with api(emu) as client:
        online = [
            client.post("/api/v1/chat/completions", json=chat_request(p)).json() for p in prompts
        ]
        tasks = [{"id": f"t{i}", "request": chat_request(p)} for i, p in enumerate(prompts)]
        item = submit_and_wait(client, jsonl(*tasks))
        by_id = results(client, item)
    for i, answer in enumerate(online):
        result = by_id[f"t{i}"]["result"]
        assert result["choices"] == answer["choices"]
        assert result["usage"] == answer["usage"]
        assert result["model"] == answer["model"]


def test_embedder_results_equal_the_online_vectors(emu: RunningEmulator) -> None:
    request = {"model": "Embeddings", "input": ["один", "два"]}
    with api(emu) as client:
        online = client.post("/api/v1/embeddings", json=request).json()
        body = jsonl({"id": "e", "request": request})
        item = wait_completed(client, create(client, "embedder", body).json()["id"])
        result = results(client, item)["e"]["result"]
    assert result["data"] == online["data"]


def test_results_come_in_a_shuffled_order(emu: RunningEmulator) -> None:
    tasks = [{"id": f"{i:03d}", "request": chat_request(f"q{i}")} for i in range(40)]
    with api(emu) as client:
        item = submit_and_wait(client, jsonl(*tasks))
        order = list(results(client, item))
    assert sorted(order) == [t["id"] for t in tasks]
    assert order != sorted(order)


def test_invalid_task_lines_are_answered_as_task_errors(emu: RunningEmulator) -> None:
    body = jsonl(
        {"id": "ok", "request": chat_request("hi")},
        b"{not json",
        {"id": "no-request"},
        {"id": "bad", "request": {"model": "NoSuchModel", "messages": []}},
        {"id": "ok", "request": chat_request("again")},
    )
    with api(emu) as client:
        item = submit_and_wait(client, body)
        response = client.get(f"/api/v1/files/{item['output_file_id']}/content")
    lines = [orjson.loads(line) for line in response.content.splitlines() if line]
    errors = sorted((ln["id"] or "", ln["error"]["status"]) for ln in lines if "error" in ln)
    assert errors == [("", 400), ("bad", 404), ("no-request", 400), ("ok", 400)]
    assert item["request_counts"] == {"total": 5, "completed": 1, "failed": 4}


def test_more_than_500_lines_is_refused_whole(emu: RunningEmulator) -> None:
    tasks = [{"id": str(i), "request": chat_request("x")} for i in range(501)]
    with api(emu) as client:
        response = create(client, "chat_completions", jsonl(*tasks))
    assert response.status_code == 400
    assert "501 lines, over the limit of 500" in response.json()["message"]


def test_an_unknown_method_is_a_400(emu: RunningEmulator) -> None:
    with api(emu) as client:
        response = create(client, "images", jsonl({"id": "a", "request": {}}))
    assert response.status_code == 400


def test_an_unknown_batch_id_is_404_batch_task_not_found(emu: RunningEmulator) -> None:
    with api(emu) as client:
        response = client.get(BATCHES, params={"batch_id": "nope"})
    assert response.status_code == 404
    assert response.json() == {"status": 404, "message": "Batch task not found"}


def test_without_batch_id_every_batch_is_listed(emu: RunningEmulator) -> None:
    with api(emu) as client:
        made = {
            create(client, "chat_completions", jsonl({"id": "a", "request": chat_request("l")}))
            .json()["id"]
            for _ in range(2)
        }
        listed = {item["id"] for item in client.get(BATCHES).json()["batches"]}
    assert made <= listed


def test_the_array_shape_answers_a_bare_list() -> None:
    with serve_emulator(profile("fast", batch_list_shape="array")) as emu, api(emu) as client:
        batch_id = create(
            client, "chat_completions", jsonl({"id": "a", "request": chat_request("hi")})
        ).json()["id"]
        answer = client.get(BATCHES, params={"batch_id": batch_id}).json()
    assert isinstance(answer, list)
    assert answer[0]["id"] == batch_id


def test_seeded_task_failures_are_500_error_lines() -> None:
    config = profile("fast", batch_processing_s=0, batch_task_failure_rate=0.5, seed=1)
    tasks = [{"id": str(i), "request": chat_request(f"q{i}")} for i in range(40)]
    with serve_emulator(config) as emu, api(emu) as client:
        item = submit_and_wait(client, jsonl(*tasks))
        lines = results(client, item).values()
    failed = [line for line in lines if "error" in line]
    assert 8 <= len(failed) <= 32
    assert {line["error"]["status"] for line in failed} == {500}
    assert item["request_counts"]["failed"] == len(failed)


def test_polls_can_be_refused_with_429_and_retry_after() -> None:
    config = profile("fast", batch_poll_429_rate=1.0, retry_after="seconds")
    with serve_emulator(config) as emu, api(emu) as client:
        response = client.get(BATCHES)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


def test_an_output_file_is_not_found_before_completion() -> None:
    with serve_emulator(profile("fast", batch_processing_s=30)) as emu, api(emu) as client:
        batch_id = create(
            client, "chat_completions", jsonl({"id": "a", "request": chat_request("hi")})
        ).json()["id"]
        [item] = client.get(BATCHES, params={"batch_id": batch_id}).json()["batches"]
        missing = client.get("/api/v1/files/whatever/content")
    assert item["status"] == "created"
    assert "output_file_id" not in item
    assert missing.status_code == 404
