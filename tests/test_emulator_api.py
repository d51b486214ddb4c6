"""The emulator's limits, validation, content rules, faults and stats, over raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batch.emulator import EmulatorConfig, RunningEmulator, profile, serve_emulator
from batch.emulator.content import BLACKLIST_ANSWER

CHAT = "/api/v1/chat/completions"
EMBED = "/api/v1/embeddings"


def fast(**knobs: Any) -> EmulatorConfig:
    return profile("fast", **knobs)


@pytest.fixture(scope="module")
def shared() -> Iterator[RunningEmulator]:
    """One zero-latency emulator for the tests that change no knobs."""
    with serve_emulator(fast(seed=3, blacklist=("contraband",), oauth_rate_per_s=1000)) as emu:
        yield emu


def api(emu: RunningEmulator, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {emu.access_token()}"}
    return httpx.Client(base_url=emu.origin, headers=headers, trust_env=False, **kwargs)


def chat_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": "GigaChat", "messages": [{"role": "user", "content": prompt}], **fields}


def concurrent_statuses(emu: RunningEmulator, n: int) -> list[int]:
    headers = {"Authorization": f"Bearer {emu.access_token()}"}

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=emu.origin, trust_env=False) as client:
            responses = await asyncio.gather(*(
                client.post(CHAT, json=chat_body("hi"), headers=headers) for _ in range(n)
            ))
        return sorted(r.status_code for r in responses)

    return asyncio.run(scenario())


def oauth(emu: RunningEmulator, *, key: str | None = None, rquid: str | None = None,
          scope: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Basic {key or emu.credentials}",
               "RqUID": rquid or str(uuid.uuid4())}
    return httpx.post(emu.auth_url, headers=headers, data={"scope": scope or emu.scope},
                      trust_env=False)


# -- limits ---------------------------------------------------------------------------

def test_pers_scope_allows_one_stream_and_refuses_the_rest_with_429() -> None:
    with serve_emulator(profile("pers", latency_base_ms=300, latency_jitter=0)) as emu:
        assert concurrent_statuses(emu, 3) == [200, 429, 429]
        stats = emu.stats()
        assert stats["peak_concurrency"] == 1
        assert stats["rate_limited"] == 2
        assert stats["requests"][CHAT] == {"200": 1, "429": 2}


def test_b2b_scope_allows_ten_concurrent_streams() -> None:
    with serve_emulator(fast(scope="GIGACHAT_API_B2B", stream_limit=None,
                             latency_base_ms=400)) as emu:
        assert concurrent_statuses(emu, 12) == [200] * 10 + [429] * 2


def test_reconfigure_changes_the_stream_limit_while_running() -> None:
    with serve_emulator(fast(stream_limit=5, latency_base_ms=300)) as emu:
        assert concurrent_statuses(emu, 6).count(200) == 5
        emu.reconfigure(stream_limit=2)
        assert concurrent_statuses(emu, 6).count(200) == 2
        assert emu.config.stream_limit == 2


def test_reconfigure_refuses_unknown_and_fixed_knobs(shared: RunningEmulator) -> None:
    with pytest.raises(ValueError, match="unknown"):
        shared.reconfigure(no_such_knob=1)
    with pytest.raises(ValueError, match="cannot change while running"):
        shared.reconfigure(port=1234)


def test_429_announces_retry_after_in_seconds_and_records_the_window() -> None:
    config = fast(stream_limit=1, latency_base_ms=300, retry_after_s=0.75)
    with serve_emulator(config) as emu, api(emu) as client:
        concurrent_statuses(emu, 2)
        refused = client.post(CHAT, json=chat_body("x"))  # the slot is free again: 200
        assert refused.status_code == 200
        windows = emu.stats()["retry_after_windows"]
        assert len(windows) == 1
        assert windows[0]["end"] - windows[0]["start"] == pytest.approx(0.75)


def test_429_retry_after_can_be_an_http_date() -> None:
    config = fast(stream_limit=1, latency_base_ms=300, retry_after="date", retry_after_s=2)
    with serve_emulator(config) as emu:
        emu.reconfigure(start_storm_s=1)
        with api(emu) as client:
            response = client.post(CHAT, json=chat_body("x"))
        announced = email.utils.parsedate_to_datetime(response.headers["retry-after"])
        window = emu.stats()["retry_after_windows"][-1]
        assert response.status_code == 429
        assert announced.timestamp() == window["end"]


def test_429_without_retry_after_when_configured_none() -> None:
    with serve_emulator(fast(retry_after="none")) as emu:
        emu.reconfigure(start_storm_s=1)
        with api(emu) as client:
            response = client.post(CHAT, json=chat_body("x"))
        assert response.status_code == 429
        assert response.json() == {"status": 429, "message": "Too many requests"}
        assert "retry-after" not in response.headers
        assert emu.stats()["retry_after_windows"] == []


def test_expired_token_gets_401_token_has_expired() -> None:
    with serve_emulator(fast(token_ttl_s=0.1)) as emu, api(emu) as client:
        assert client.post(CHAT, json=chat_body("x")).status_code == 200
        asyncio.run(asyncio.sleep(0.15))
        response = client.post(CHAT, json=chat_body("x"))
        assert response.status_code == 401
        assert response.json() == {"status": 401, "message": "Token has expired"}


def test_unknown_token_gets_401(shared: RunningEmulator) -> None:
    headers = {"Authorization": "Bearer not-a-token"}
    response = httpx.post(f"{shared.base_url}/chat/completions", json=chat_body("x"),
                          headers=headers, trust_env=False)
    assert response.status_code == 401


def test_oauth_answers_token_with_expiry_in_milliseconds(shared: RunningEmulator) -> None:
    body = oauth(shared).json()
    assert set(body) == {"access_token", "expires_at"}
    assert body["expires_at"] > 1e12


def test_oauth_rejects_a_wrong_key_with_code_6(shared: RunningEmulator) -> None:
    response = oauth(shared, key=base64.b64encode(b"someone:else").decode())
    assert response.status_code == 401
    assert response.json() == {"code": 6, "message": "credentials doesn't match db data"}


@pytest.mark.parametrize("rquid", ["not-a-uuid", str(uuid.uuid1())])
def test_oauth_requires_a_uuid4_rquid(shared: RunningEmulator, rquid: str) -> None:
    response = oauth(shared, rquid=rquid)
    assert response.status_code == 400
    assert response.json()["code"] == 5


def test_oauth_refuses_a_scope_the_key_is_not_for(shared: RunningEmulator) -> None:
    response = oauth(shared, scope="GIGACHAT_API_PERS")
    assert response.status_code == 400
    assert response.json()["code"] == 7


def test_oauth_allows_about_ten_requests_per_second() -> None:
    with serve_emulator(fast()) as emu:
        statuses = [oauth(emu).status_code for _ in range(12)]
        assert statuses.count(200) == 10 and statuses[-1] == 429
        assert emu.stats()["oauth_calls"] == 12


def test_chat_over_the_context_window_gets_413() -> None:
    with serve_emulator(fast(context_window=50)) as emu, api(emu) as client:
        response = client.post(CHAT, json=chat_body("word " * 60))
        assert response.status_code == 413
        assert client.post(CHAT, json=chat_body("word " * 10)).status_code == 200


def test_embedding_over_the_input_limit_gets_413(shared: RunningEmulator) -> None:
    long_text = "word " * 600
    with api(shared) as client:
        too_long = client.post(EMBED, json={"model": "Embeddings", "input": ["ok", long_text]})
        giga_r = client.post(EMBED, json={"model": "EmbeddingsGigaR", "input": [long_text]})
    assert too_long.status_code == 413
    assert giga_r.status_code == 200


@pytest.mark.parametrize(("path", "body"), [
    (CHAT, chat_body("x", model="GigaChat-Ultra")),
    (EMBED, {"model": "NoSuchEmbedder", "input": ["x"]}),
])
def test_unknown_model_gets_404_no_such_model(
    shared: RunningEmulator, path: str, body: dict[str, Any]
) -> None:
    with api(shared) as client:
        response = client.post(path, json=body)
    assert response.status_code == 404
    assert response.json() == {"status": 404, "message": "No such model"}


@pytest.mark.parametrize("fields", [
    {"temperature": 0},
    {"max_tokens": 0},
    {"top_p": 1.5},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": []},
    {"function_call": {"name": "undeclared"}},
])
def test_invalid_parameters_get_422(shared: RunningEmulator, fields: dict[str, Any]) -> None:
    with api(shared) as client:
        response = client.post(CHAT, json=chat_body("x", **fields))
    assert response.status_code == 422
    assert response.json()["status"] == 422


def test_malformed_json_gets_400(shared: RunningEmulator) -> None:
    with api(shared) as client:
        response = client.post(
            CHAT, content=b'{"model": ', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400


def test_max_tokens_cuts_the_answer_with_finish_reason_length(shared: RunningEmulator) -> None:
    with api(shared) as client:
        body = client.post(CHAT, json=chat_body("x [[answer_tokens=50]]", max_tokens=7)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7


def test_a_blacklisted_word_finishes_with_blacklist_on_http_200(shared: RunningEmulator) -> None:
    with api(shared) as client:
        response = client.post(CHAT, json=chat_body("tell me about Contraband"))
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "blacklist"
    assert choice["message"]["content"] == BLACKLIST_ANSWER


def test_functions_get_a_deterministic_function_call(shared: RunningEmulator) -> None:
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}]
    body = chat_body("Weather in Kazan", functions=functions)
    with api(shared) as client:
        first = client.post(CHAT, json=body).json()
        second = client.post(CHAT, json=body).json()
        declined = client.post(CHAT, json={**body, "function_call": "none"}).json()
    choice = first["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {
        "name": "weather", "arguments": {"city": "Weather in Kazan", "days": 5}}
    assert second["choices"] == first["choices"]
    assert declined["choices"][0]["finish_reason"] == "stop"


def test_a_shared_session_prefix_is_reported_as_precached(shared: RunningEmulator) -> None:
    system = {"role": "system", "content": "You are a careful translator. " * 5}
    session = {"X-Session-ID": str(uuid.uuid4())}

    def ask(question: str) -> dict[str, int]:
        body = {"model": "GigaChat", "messages": [system, {"role": "user", "content": question}]}
        with api(shared) as client:
            usage: dict[str, int] = client.post(CHAT, json=body, headers=session).json()["usage"]
        return usage

    first, second = ask("Translate: cat"), ask("Translate: dog")
    assert first["precached_prompt_tokens"] == 0
    assert second["precached_prompt_tokens"] > 0
    # Cached tokens are reported beside prompt_tokens, not inside it.
    full = first["prompt_tokens"]
    assert second["prompt_tokens"] + second["precached_prompt_tokens"] == full
    assert second["total_tokens"] == second["prompt_tokens"] + second["completion_tokens"]


def test_the_prefix_cache_expires_after_its_ttl() -> None:
    with serve_emulator(fast(cache_ttl_s=0.1)) as emu, api(emu) as client:
        messages = [{"role": "system", "content": "shared"}, {"role": "user", "content": "q"}]
        session = {"X-Session-ID": "s1"}
        client.post(CHAT, json={"messages": messages}, headers=session)
        asyncio.run(asyncio.sleep(0.15))
        usage = client.post(CHAT, json={"messages": messages}, headers=session).json()["usage"]
        assert usage["precached_prompt_tokens"] == 0


def test_exhausted_balance_gets_402() -> None:
    with serve_emulator(fast(balance_tokens=30)) as emu, api(emu) as client:
        assert client.post(CHAT, json=chat_body("x [[answer_tokens=40]]")).status_code == 200
        response = client.post(CHAT, json=chat_body("x"))
        assert response.status_code == 402
        assert client.get("/api/v1/balance").json()["balance"][0]["value"] == 0


def test_balance_is_403_for_accounts_without_prepaid_tokens() -> None:
    with serve_emulator(fast(balance_tokens=None)) as emu, api(emu) as client:
        assert client.get("/api/v1/balance").status_code == 403


def test_every_answer_carries_request_and_session_ids(shared: RunningEmulator) -> None:
    with api(shared) as client:
        echoed = client.post(CHAT, json=chat_body("x"),
                             headers={"X-Request-ID": "req-1", "X-Session-ID": "ses-1"})
        fresh = client.post(CHAT, json=chat_body("temperature", temperature=-1))
    assert (echoed.headers["x-request-id"], echoed.headers["x-session-id"]) == ("req-1", "ses-1")
    assert uuid.UUID(fresh.headers["x-request-id"]).version == 4
    assert uuid.UUID(fresh.headers["x-session-id"]).version == 4


def test_latency_follows_the_configured_model() -> None:
    config = fast(latency_base_ms=40, latency_per_completion_token_ms=1, latency_jitter=0.5)
    with serve_emulator(config) as emu, api(emu) as client:
        for _ in range(12):
            client.post(CHAT, json=chat_body("x [[answer_tokens=20]]"))
        mean = emu.stats()["mean_latency_s"]
    prompt = 7  # "x [[answer_tokens=20]]" after count_tokens, plus the message overhead
    expected = config.mean_latency_s(prompt, 20)
    assert expected == pytest.approx(0.06, abs=1e-3)
    assert mean == pytest.approx(expected, rel=0.3)
    assert config.ceiling_rps(prompt, 20) == pytest.approx(10_000 / expected)


def test_service_time_measures_answered_requests_from_arrival_to_answer() -> None:
    config = fast(latency_base_ms=40, latency_jitter=0)
    with serve_emulator(config) as emu, api(emu) as client:
        for _ in range(4):
            assert client.post(CHAT, json=chat_body("x")).status_code == 200
            # Refused at once: were it counted, the mean would fall far below 40 ms.
            assert client.post(CHAT, json=chat_body("x", temperature=-1)).status_code == 422
        stats = emu.stats()
    assert stats["mean_latency_s"] == pytest.approx(0.040)
    # The slot is held for the configured latency (the pacer may end a wait a little
    # early to make up for the timer's lateness, by 2 ms at most).
    assert 0.040 - 0.002 <= stats["mean_service_s"] < 0.040 + 0.025


def test_streams_are_held_for_the_configured_latency_on_average() -> None:
    """Timers fire late and answers take time to write: the pacer makes up for both, so
    the capacity really is limit / mean latency (unpaced, this was about 0.6 ms over)."""
    config = fast(latency_base_ms=5, latency_jitter=0.2, seed=4)
    with serve_emulator(config) as emu, api(emu) as client:
        for _ in range(40):  # the pacer learns the timer's lateness
            client.post(CHAT, json=chat_body("x"))
        emu.reset_stats()
        for _ in range(200):
            assert client.post(CHAT, json=chat_body("x")).status_code == 200
        stats = emu.stats()
    assert stats["mean_service_s"] == pytest.approx(stats["mean_latency_s"], abs=0.0003)


# -- faults ---------------------------------------------------------------------------

@pytest.mark.parametrize(("knob", "status", "content_type"), [
    ("fault_5xx", 500, "application/json"),
    ("fault_html_502", 502, "text/html"),
])
def test_server_error_faults(knob: str, status: int, content_type: str) -> None:
    with serve_emulator(fast(**{knob: 1.0})) as emu, api(emu) as client:
        response = client.post(CHAT, json=chat_body("x"))
        assert response.status_code == status
        assert response.headers["content-type"] == content_type
        assert emu.stats()["faults"] == {knob.removeprefix("fault_"): 1}


def test_502_fault_is_an_html_page() -> None:
    with serve_emulator(fast(fault_html_502=1.0)) as emu, api(emu) as client:
        assert b"<title>502 Bad Gateway</title>" in client.post(CHAT, json=chat_body("x")).content


def test_reset_fault_cuts_the_connection_mid_response() -> None:
    with serve_emulator(fast(fault_reset=1.0)) as emu, api(emu) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(CHAT, json=chat_body("x"))
        stats = emu.stats()
        assert stats["faults"] == {"reset": 1}
        assert stats["requests"][CHAT] == {"0": 1}


def test_hang_fault_answers_nothing_until_the_client_times_out() -> None:
    with serve_emulator(fast(fault_hang=1.0, hang_s=1.0)) as emu, api(emu, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=chat_body("x"))
        assert emu.stats()["faults"] == {"hang": 1}


def test_error_body_fault_is_a_200_carrying_a_429() -> None:
    with serve_emulator(fast(fault_error_body=1.0)) as emu, api(emu) as client:
        response = client.post(CHAT, json=chat_body("x"))
        assert response.status_code == 200
        assert response.json() == {"status": 429, "message": "Too many requests"}


def test_a_storm_refuses_every_request_until_its_window_ends() -> None:
    with serve_emulator(fast(fault_storm=1.0, storm_s=0.3)) as emu, api(emu) as client:
        opened = client.post(CHAT, json=chat_body("x"))
        emu.reconfigure(fault_storm=0.0)
        during = client.post(EMBED, json={"input": ["x"]})
        asyncio.run(asyncio.sleep(float(during.headers["retry-after"]) + 0.05))
        after = client.post(CHAT, json=chat_body("x"))
        window = emu.stats()["retry_after_windows"][0]
    assert (opened.status_code, during.status_code, after.status_code) == (429, 429, 200)
    assert window["end"] - window["start"] == pytest.approx(0.3, abs=0.01)


def test_faults_repeat_with_the_same_seed() -> None:
    def statuses(seed: int) -> list[int]:
        config = fast(fault_5xx=0.3, fault_error_body=0.3, seed=seed)
        with serve_emulator(config) as emu, api(emu) as client:
            return [client.post(CHAT, json=chat_body("x")).status_code for _ in range(20)]

    assert statuses(5) == statuses(5)
    assert statuses(5) != statuses(6)


# -- stats ----------------------------------------------------------------------------

def test_stats_list_arrivals_in_order_and_reset_clears_them() -> None:
    with serve_emulator(fast()) as emu, api(emu) as client:
        client.post(CHAT, json=chat_body("x"))
        client.post(EMBED, json={"input": ["a", "b"]})
        client.get("/api/v1/models/NoSuchModel")
        stats = emu.stats()
        arrivals = [(a["path"], a["status"]) for a in stats["arrivals"]]
        assert arrivals == [("/api/v2/oauth", 200), (CHAT, 200), (EMBED, 200),
                            ("/api/v1/models/{id}", 404)]
        times = [a["t"] for a in stats["arrivals"]]
        assert times == sorted(times)
        assert stats["tokens"]["embedding"] == 12
        assert (stats["oauth_calls"], stats["stream_limit"], stats["in_flight"]) == (1, 10_000, 0)
        assert stats["mean_service_s"] is not None
        emu.reset_stats()
        assert emu.stats()["arrivals"] == []
        assert emu.stats()["mean_service_s"] is None


def test_oversized_body_gets_413(shared: RunningEmulator) -> None:
    with api(shared) as client:
        response = client.post(EMBED, json={"input": ["x" * (21 * 1024 * 1024)]})
    assert response.status_code == 413


def test_a_subprocess_emulator_serves_and_stops() -> None:
    with serve_emulator(fast(), subprocess=True) as emu, api(emu) as client:
        assert client.post(CHAT, json=chat_body("x")).status_code == 200
        origin = emu.origin
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{origin}/_emulator/stats", trust_env=False)
