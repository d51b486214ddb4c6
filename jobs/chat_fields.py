"""The parts of a chat line that need more than a type check: `messages` (roles, contents,
the keys a message may carry), `functions` and `function_call`. Each function records every
problem on the line's `RecordFields` and returns what it could read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.validation import RecordFields, type_name

ROLES = ("system", "user", "assistant", "function")
# Keys a message may carry besides role and content (function calling, attachments).
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "functions_state_id", "attachments"}
)


def message_list(fields: RecordFields) -> list[dict[str, Any]] | None:
    """The line's `messages`, each a role, a content and the pass-through keys."""
    raw = fields.value("messages")
    where = fields.source("messages")
    if not isinstance(raw, (list, tuple)) or not raw:
        fields.add_problem("messages", f"must be a non-empty array, got {_describe(raw)}")
        return None
    messages: list[dict[str, Any]] = []
    for n, item in enumerate(raw):
        at = f"{where}[{n}]"
        if not isinstance(item, Mapping):
            fields.add_problem_at(at, f"must be an object, got {type_name(item)}")
            continue
        # Parquet structs give every key of the column's type; null means absent.
        message = {str(k): v for k, v in item.items() if v is not None}
        for key in message.keys() - MESSAGE_KEYS:
            fields.add_problem_at(f"{at}.{key}", "unknown message field")
        role = message.get("role")
        if role not in ROLES:
            fields.add_problem_at(f"{at}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if content is None and role == "assistant" and "function_call" in message:
            message["content"] = ""
        elif not isinstance(content, str):
            fields.add_problem_at(f"{at}.content", f"must be a string, got {type_name(content)}")
        messages.append(message)
    return messages


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "an empty array"
    return type_name(value)


def function_list(fields: RecordFields) -> list[dict[str, Any]] | None:
    """The line's `functions`, each an object with a name; None when it offers none."""
    raw = fields.value("functions")
    if raw is None:
        return None
    where = fields.source("functions")
    if not isinstance(raw, (list, tuple)):
        fields.add_problem("functions", f"must be an array of objects, got {type_name(raw)}")
        return None
    functions: list[dict[str, Any]] = []
    for n, item in enumerate(raw):
        if not isinstance(item, Mapping):
            fields.add_problem_at(f"{where}[{n}]", f"must be an object, got {type_name(item)}")
            continue
        function = {str(k): v for k, v in item.items() if v is not None}
        if not isinstance(function.get("name"), str) or not function["name"]:
            fields.add_problem_at(f"{where}[{n}].name", "must be a non-empty string")
        if not isinstance(function.get("parameters", {}), Mapping):
            fields.add_problem_at(f"{where}[{n}].parameters", "must be an object")
        functions.append(function)
    return functions


def function_call_setting(fields: RecordFields) -> str | dict[str, Any] | None:
    """The line's `function_call`: "auto", "none" or {"name": ...}; None when unset."""
    raw = fields.value("function_call")
    if raw is None:
        return None
    if raw in ("auto", "none"):
        return str(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("name"), str) and raw["name"]:
        return dict(raw)
    fields.add_problem("function_call", f'must be "auto", "none" or {{"name": ...}}, got {raw!r}')
    return None
