"""The counting pass: texts packed into /tokens/count calls, repeats counted once, failures
approximated, the run's limiter and retry machinery in the path."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from batch.api_types import TokenCount
from batch.counting import InputCounter, count_jobs, count_offline, limited_counter
from batch.errors import BadRequest, RateLimited, ServerError
from batch.estimate_math import Tally, approximate_tokens
from batch.limiter import AdaptiveLimiter
from batch.projection import Reservoir
from batch.retry import RetryPolicy
from jobs.base import Job, SourceLocation
from jobs.chat import DEFAULT_COMPLETION_RESERVE
from jobs.embeddings import EmbeddingOptions
from jobs.registry import kind_for

HERE = SourceLocation("jobs.jsonl", 1)


def chat_job(
    n: int,
    prompt: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
    model: str = "GigaChat",
) -> Job:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    request: dict[str, object] = {"model": model, "messages": messages}
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    return Job(id=str(n), location=HERE, request=request)


def embed_job(n: int, text: str) -> Job:
    return Job(id=str(n), location=HERE, request={"model": "Embeddings", "text": text})


def words(texts: Sequence[str]) -> list[int]:
    """A stand-in tokenizer: one token per word."""
    return [len(t.split()) for t in texts]


class FakeCounter:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    async def __call__(self, texts: Sequence[str], model: str) -> list[int]:
        self.calls.append((list(texts), model))
        return words(texts)


def run_count(counter: InputCounter, jobs: list[Job], fake: FakeCounter) -> None:
    anyio.run(lambda: count_jobs(iter(jobs), counter, fake, workers=3))


def test_chat_input_is_the_counted_texts_plus_the_message_overhead() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    run_count(counter, [chat_job(1, "one two three", system="be brief")], FakeCounter())
    assert tally.models["GigaChat"].input_tokens == 3 + 2 + 2 * 3


def test_a_repeated_system_prompt_is_counted_once_and_billed_every_time() -> None:
    tally = Tally("chat")
    fake = FakeCounter()
    counter = InputCounter(kind_for("chat"), tally, max_texts=4)
    jobs = [chat_job(n, f"question {n}", system="a long shared system prompt") for n in range(50)]
    run_count(counter, jobs, fake)
    sent = [text for texts, _ in fake.calls for text in texts]
    assert sent.count("a long shared system prompt") <= 2
    assert tally.models["GigaChat"].input_tokens == 50 * (5 + 2 + 2 * 3)


def test_texts_are_packed_into_calls_per_model() -> None:
    tally = Tally("chat")
    fake = FakeCounter()
    counter = InputCounter(kind_for("chat"), tally, max_texts=10)
    jobs = [
        chat_job(n, f"prompt {n}", model="GigaChat" if n % 2 else "GigaChat-Pro") for n in range(40)
    ]
    run_count(counter, jobs, fake)
    assert all(len(texts) <= 10 for texts, _ in fake.calls)
    assert {model for _, model in fake.calls} == {"GigaChat", "GigaChat-Pro"}
    assert len(fake.calls) == 4
    assert tally.models["GigaChat"].rows == tally.models["GigaChat-Pro"].rows == 20


def test_output_bound_is_max_tokens_or_the_kinds_default_reserve() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    run_count(counter, [chat_job(1, "a", max_tokens=100), chat_job(2, "b")], FakeCounter())
    model = tally.models["GigaChat"]
    assert model.output_bound == 100 + DEFAULT_COMPLETION_RESERVE
    assert model.rows_default_bound == 1


def test_embedding_input_adds_five_per_text_and_skips_repeats_the_run_sends_once() -> None:
    tally = Tally("embed", has_output=False)
    counter = InputCounter(kind_for("embed"), tally)
    jobs = [embed_job(1, "alpha beta"), embed_job(2, "gamma"), embed_job(3, "alpha beta")]
    run_count(counter, jobs, FakeCounter())
    model = tally.models["Embeddings"]
    assert model.rows == 3
    assert model.input_tokens == (2 + 5) + (1 + 5)


def test_chat_jobs_are_offered_to_the_sampler() -> None:
    sampler: Reservoir[tuple[Job, str]] = Reservoir(100, seed=1)
    counter = InputCounter(kind_for("chat"), Tally("chat"), sampler=sampler)
    run_count(counter, [chat_job(n, "x") for n in range(5)], FakeCounter())
    assert sorted((job.id, model) for job, model in sampler.items) == [
        (str(n), "GigaChat") for n in range(5)
    ]


def test_texts_the_api_refuses_to_count_are_approximated_and_reported() -> None:
    async def refuse(texts: Sequence[str], model: str) -> list[int]:
        raise BadRequest("bad input", status=400)

    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    anyio.run(lambda: count_jobs(iter([chat_job(1, "x" * 35)]), counter, refuse, workers=1))
    assert tally.models["GigaChat"].input_tokens == approximate_tokens("x" * 35) + 3
    assert counter.stats.uncounted_texts == 1
    assert "bad input" in (counter.stats.uncounted_reason or "")


def test_offline_counting_approximates_every_text_without_requests() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    count_offline([chat_job(1, "y" * 70)], counter)
    assert tally.models["GigaChat"].input_tokens == 20 + 3
    assert counter.stats.uncounted_reason is None


def test_limited_counter_waits_out_a_429_and_retries() -> None:
    answers: list[Exception | list[TokenCount]] = [
        RateLimited(retry_after=0.05),
        [TokenCount(tokens=7, characters=20)],
    ]
    sent_at: list[float] = []

    async def tokens_count(texts: Sequence[str], model: str) -> list[TokenCount]:
        sent_at.append(anyio.current_time())
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> list[int]:
        limiter = AdaptiveLimiter(4)
        count = limited_counter(tokens_count, limiter, RetryPolicy(max_attempts=2))
        return await count(["some text"], "GigaChat")

    assert anyio.run(main) == [7]
    assert sent_at[1] - sent_at[0] >= 0.05


def test_limited_counter_gives_up_after_the_policy_on_server_errors() -> None:
    async def tokens_count(texts: Sequence[str], model: str) -> list[TokenCount]:
        raise ServerError("down", status=503)

    async def main() -> list[int]:
        policy = RetryPolicy(max_attempts=2, initial=0.01, jitter=0.0)
        return await limited_counter(tokens_count, AdaptiveLimiter(2), policy)(["t"], "m")

    with pytest.raises(ServerError):
        anyio.run(main)


def test_a_shared_system_prompt_after_the_first_request_of_its_session_is_cacheable() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    jobs = [chat_job(n, f"question {n}", system="shared rules here") for n in range(10)]
    run_count(counter, jobs, FakeCounter())
    # Nine requests find the system message (3 words + 3 overhead) in their session's cache.
    assert tally.models["GigaChat"].cacheable_tokens == 9 * (3 + 3)


def test_the_last_message_is_never_cacheable() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    jobs = [chat_job(n, "same question", system="rules") for n in range(3)]
    run_count(counter, jobs, FakeCounter())
    assert tally.models["GigaChat"].cacheable_tokens == 2 * (1 + 3)


def test_requests_without_a_system_prompt_have_no_session_and_nothing_cacheable() -> None:
    tally = Tally("chat")
    counter = InputCounter(kind_for("chat"), tally)
    run_count(counter, [chat_job(n, "same question") for n in range(3)], FakeCounter())
    assert tally.models["GigaChat"].cacheable_tokens == 0


def test_embedding_texts_over_the_limit_are_not_billed_unless_truncated() -> None:
    long_text = " ".join(["w"] * 600)  # 600 tokens to the stand-in tokenizer
    for mode, expected in (("fail", 1 + 5), ("truncate", (1 + 5) + (512 + 5))):
        tally = Tally("embed", has_output=False)
        kind = kind_for("embed", EmbeddingOptions(on_long_text=mode))  # type: ignore[arg-type]
        counter = InputCounter(kind, tally)
        run_count(counter, [embed_job(1, "short"), embed_job(2, long_text)], FakeCounter())
        assert tally.models["Embeddings"].input_tokens == expected
        assert counter.stats.over_limit == 1


def test_calls_carry_a_bounded_number_of_characters_and_a_long_text_goes_alone() -> None:
    fake = FakeCounter()
    counter = InputCounter(kind_for("chat"), Tally("chat"), max_chars=100)
    texts = ["a " * 20, "b " * 20, "c " * 250, "d"]
    run_count(counter, [chat_job(n, text) for n, text in enumerate(texts)], fake)
    calls = sorted((texts for texts, _ in fake.calls), key=lambda t: (len(t), t))
    assert calls == [["c " * 250], ["d"], ["a " * 20, "b " * 20]]


def test_a_request_that_fails_for_good_stops_the_pass_and_is_raised_as_itself() -> None:
    async def down(texts: Sequence[str], model: str) -> list[int]:
        raise ServerError("down", status=503)

    counter = InputCounter(kind_for("chat"), Tally("chat"), max_texts=1)
    jobs = iter([chat_job(n, f"prompt {n}") for n in range(50)])
    with pytest.raises(ServerError, match="down"):
        anyio.run(lambda: count_jobs(jobs, counter, down, workers=4))
