"""What makes a text a user's request, and whether it still states the values a call uses: shared
by exploration (grounded imagination keeps a written request only if it passes) and exploitation
(the ``bad_query`` check, and paraphrases that lose a value)."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

# Lines of the prompts and the ReAct format that a small explorer copies instead of writing a request.
PROMPT_LINE = re.compile(r"^\s*\**(thought|action|action input|observation|final answer|api_name|description|"
                         r"user query|call|result|request)\**\s*:", re.I | re.M)
PROMPT_PHRASES = ("write one realistic", "do not name the api", "requests already explored", "this is its documentation",
                  "learning to use an api", "a user asked for something", "this api call answered it",
                  "write the user's request", "write one call of this api")
HTTP_REQUEST = re.compile(r"^\s*(GET|POST|PUT|PATCH|DELETE)\s+\S*/", re.I)
# A key-value pair of a JSON object ('date": "2023-10-01",'): the free explorer sometimes
# imagines a fragment of the call instead of a request.
JSON_PAIR = re.compile(r'"\s*:\s*(["\[{\d-]|true\b|false\b|null\b)')


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def query_problem(query: str, description: str, min_words: int = 3, max_chars: int = 400) -> str | None:
    """Why ``query`` is not a user request, or None."""
    text = (query or "").strip()
    if len(words(text)) < min_words:
        return f"fewer than {min_words} words"
    if len(text) > max_chars:
        return f"longer than {max_chars} characters"
    if PROMPT_LINE.search(text):
        return "a line of the ReAct format or of the prompt, not a request"
    if any(phrase in text.lower() for phrase in PROMPT_PHRASES):
        return "a copy of the prompt"
    if HTTP_REQUEST.match(text):
        return "an HTTP request, not a user's request"
    if text[0] in "{[" or re.search(r"\{\s*\"", text) or JSON_PAIR.search(text):
        return "JSON, not a user's request"
    flat_query, flat_description = " ".join(words(text)), " ".join(words(description))
    if len(flat_query) >= 20 and (flat_query in flat_description or
                                  difflib.SequenceMatcher(None, flat_query, flat_description[:len(flat_query) * 2]).ratio() > 0.8):
        return "a copy of the API's description"
    return None


def leaves(value: Any) -> list[Any]:
    """The scalars inside a JSON value, in order."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in leaves(v)]
    return [value]


def call_values(arguments: dict[str, Any] | str) -> list[str]:
    """The string and number values of a call's arguments, as text."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, TypeError):
            return []

    return [str(v) for v in leaves(arguments) if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def missing_value(text: str, values: list[str]) -> str | None:
    """A value that ``text`` does not state (case-insensitive), if any."""
    lowered = text.lower()
    return next((v for v in values if v.strip() and v.lower().strip() not in lowered), None)
