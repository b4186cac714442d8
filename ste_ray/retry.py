"""Retry delays shared by the model client and the tool-call actors: exponential backoff with full
jitter, and the server's ``Retry-After`` (seconds or an HTTP date) when it sends one."""

from __future__ import annotations

import email.utils
import random
import time


def retry_after_seconds(header: str | None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds; None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None) -> float:
    """The wait before retry number ``attempt + 1`` (``attempt`` counts from 0): the server's
    Retry-After when given, else a uniform draw up to ``base_s * 2**attempt``; never above ``max_s``."""
    if retry_after is not None:
        return min(retry_after, max_s)
    return random.uniform(0, min(max_s, base_s * 2**attempt))
