"""The rules every job kind applies to the fields of one record, in one place.

A `RecordFields` reads a record through the kind's column mapping, checks types and ranges,
and collects every problem (named by the key or column the user wrote) before the kind
raises `JobInvalid` once with all of them. `null` counts as absent, so Parquet columns with
gaps behave like JSONL lines that leave a field out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from jobs.base import JobInvalid, Problem, SourceLocation

# The API refuses a request body over 20 MB (413): a job whose own request is larger can
# never be answered, so validation says so before anything is sent.
MAX_REQUEST_BYTES = 20 * 1024 * 1024
# No tokenizer packs more characters than this into one token (the longest entries of
# GigaChat-like vocabularies are runs of a few dozen symbols), and whitespace is counted as
# free: a text whose other characters alone, divided by this, exceed a limit is certainly over
# it. Anything shorter is left to the kind's exact counting.
MAX_CHARS_PER_TOKEN = 64
# A request whose JSON is at most this many bytes cannot hold a text certainly over a limit of
# 64 tokens or more, so kinds are asked about larger requests only (validation stays ~1 us a
# line cheaper).
TOKEN_CHECK_BYTES = 64 * MAX_CHARS_PER_TOKEN


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers, although Python says so)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RecordFields:
    """One record seen through a column mapping, collecting problems as fields are read.

    `sources` maps each canonical field the kind knows to the key it is read from; any other
    key in the record is a problem (a typo like `temprature` must not silently change answers).
    """

    def __init__(
        self,
        record: Mapping[str, Any],
        location: SourceLocation,
        sources: Mapping[str, str],
    ) -> None:
        self.record = record
        self.location = location
        self.sources = sources
        self.problems: list[Problem] = []
        known = set(sources.values())
        for key in record:
            if key not in known:
                self.add_problem_at(
                    str(key),
                    f"unknown field (this kind reads: {', '.join(sorted(known))}; "
                    f"--keep-columns {key} copies it to the output)",
                )

    def source(self, name: str) -> str:
        """The key the user wrote for canonical field `name`."""
        return self.sources[name]

    def add_problem_at(self, source: str, message: str) -> None:
        self.problems.append(Problem(self.location, source, message))

    def add_problem(self, name: str, message: str) -> None:
        self.add_problem_at(self.source(name), message)

    def value(self, name: str) -> Any:
        """The raw value of canonical field `name`; None when absent or null."""
        return self.record.get(self.source(name))

    def has(self, name: str) -> bool:
        return self.value(name) is not None

    def job_id(self) -> str:
        """The job id: a string or an integer, normalised to a string; absent means the
        record's line or row number."""
        value = self.value("id")
        if value is None:
            return str(self.location.number)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.add_problem("id", f"must be a string or an integer, got {type_name(value)}")
            return ""
        text = str(value)
        if not text:
            self.add_problem("id", "must not be empty")
        return text

    def string(self, name: str, *, allow_empty: bool = False) -> str | None:
        value = self.value(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.add_problem(name, f"must be a string, got {type_name(value)}")
            return None
        if not allow_empty and not value.strip():
            self.add_problem(name, "must not be empty")
            return None
        return value

    def number(
        self,
        name: str,
        *,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
    ) -> float | None:
        value = self.value(name)
        if value is None:
            return None
        problem = number_problem(value, above=above, at_least=at_least, at_most=at_most)
        if problem:
            self.add_problem(name, problem)
            return None
        return float(value)

    def integer(self, name: str, *, at_least: int) -> int | None:
        value = self.value(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.add_problem(name, f"must be an integer, got {type_name(value)}")
            return None
        if value < at_least:
            self.add_problem(name, f"must be at least {at_least}, got {value}")
            return None
        return value

    def check(self) -> None:
        """Raise JobInvalid with every problem collected, if there is any."""
        if self.problems:
            raise JobInvalid(self.problems)


def number_problem(
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> str | None:
    """What is wrong with `value` as a number in the given range, or None."""
    if not is_number(value):
        return f"must be a number, got {type_name(value)}"
    if above is not None and value <= above:
        return f"must be greater than {above:g}, got {value}"
    if at_least is not None and value < at_least:
        return f"must be at least {at_least:g}, got {value}"
    if at_most is not None and value > at_most:
        return f"must be at most {at_most:g}, got {value}"
    return None


def json_text(value: Any) -> str | None:
    """A carried-through value (like `metadata`) as JSON text, so any shape fits one
    Parquet string column; None stays null."""
    return None if value is None else orjson.dumps(value).decode()


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def oversized_line(limit: int = MAX_REQUEST_BYTES) -> str:
    """The problem of a line longer than any request may be (it is not even parsed)."""
    return (
        f"the line is over {_megabytes(limit)}, the API's request limit, so it can never be "
        "sent: split or shorten it"
    )


def oversized_request(size: int, limit: int = MAX_REQUEST_BYTES) -> str:
    """The problem of a job whose request (as JSON, a few keys short of the wire body) is
    `size` bytes, over the API's limit."""
    return (
        f"the request is {_megabytes(size)}, over the API's {_megabytes(limit)} limit, so it "
        "can never be sent: split or shorten it"
    )


def fewest_tokens(texts: Iterable[str]) -> int:
    """Fewer tokens than any tokenizer can count `texts` as: their non-whitespace characters
    over MAX_CHARS_PER_TOKEN (computed exactly only for texts long enough to matter)."""
    tokens = 0
    for text in texts:
        if len(text) >= MAX_CHARS_PER_TOKEN:
            tokens += len("".join(text.split())) // MAX_CHARS_PER_TOKEN
    return tokens


def token_limit_problem(
    location: SourceLocation,
    source: str | None,
    texts: Sequence[str],
    limit: int,
    limit_name: str,
    model: str,
) -> list[Problem]:
    """A problem at `source` when `texts` certainly exceed `model`'s `limit` tokens (its
    "context window", its "input limit"), else none. Cheap for short texts: characters are
    looked at only past limit x MAX_CHARS_PER_TOKEN of them."""
    if sum(map(len, texts)) <= limit * MAX_CHARS_PER_TOKEN:
        return []
    tokens = fewest_tokens(texts)
    if tokens <= limit:
        return []
    return [
        Problem(
            location,
            source,
            f"at least {tokens} tokens by length alone, over the {limit}-token {limit_name} "
            f"of {model}, so it can never be sent: shorten it",
        )
    ]
