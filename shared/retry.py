"""Retrying a publish for as long as the service runs: what the monitor's batches and the enforcers'
reports share. While running, a failure is retried (same message id upstream) with exponential back-off
capped at ``max_delay``; once ``stopping()`` says so, only ``retries_at_stop`` more attempts are made.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["retry_until_stopped"]


async def retry_until_stopped(send: Callable[[], Awaitable[None]], stopping: Callable[[], bool], *,
                              delay: float, max_delay: float, retries_at_stop: int, on_error: Callable[[], None],
                              log: logging.Logger, what: str, extra: Callable[[], dict[str, Any]] | None = None
                              ) -> bool:
    """True once ``send()`` succeeded; False when it still failed after stopping began. ``on_error`` is
    called per failure (a counter); the first three failures and every 50th are logged."""
    attempt = 0
    while True:
        try:
            await send()
            if attempt:
                log.info(f"{what} succeeded after retries", extra={"attempts": attempt + 1})
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_error()
            attempt += 1
            if stopping():
                if retries_at_stop <= 0:
                    return False
                retries_at_stop -= 1
            if attempt <= 3 or attempt % 50 == 0:
                log.warning(f"{what} failed; retrying", extra={"attempt": attempt, "error": repr(exc),
                                                               **(extra() if extra else {})})
            await asyncio.sleep(min(max_delay, delay * 2 ** min(attempt - 1, 10)))
