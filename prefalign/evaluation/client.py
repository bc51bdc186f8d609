"""A client for OpenAI-compatible chat-completion servers (OpenAI, vLLM, llama.cpp, ...).

Used by the ``openai`` judge and the ``llm_judge`` score. Requests run concurrently (a thread pool of
``concurrency`` workers), are retried with exponential backoff on connection errors, timeouts, HTTP 429 and
5xx, and on a 200 whose body is cut short or is not JSON. Every reply the caller accepts (a judge accepts the
replies it can parse) is cached on disk (SQLite, keyed by model, messages and sampling settings), so a re-run
costs nothing and an interrupted run keeps what it obtained; an empty or refused reply is never cached, so a
re-run asks for it again instead of keeping a transient fault of the server.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeUnavailable(RuntimeError):
    """The judge server could not be reached or kept failing; obtained replies stay in the cache."""


class ReplyCache:
    """A thread-safe SQLite key-value store of replies."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use (building a judge does not touch the disk)."""
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        return self._connection

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db().execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._db().execute("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", (key, reply))

    def __len__(self) -> int:
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM replies").fetchone()[0]


class ChatClient:
    """Chat completions from an OpenAI-compatible server.

    Args:
        base_url: server root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: the model name sent with each request.
        api_key_env: environment variable holding the API key (may be unset for local servers).
        concurrency: requests in flight at once.
        max_retries: retries per request after the first attempt.
        backoff: first retry delay in seconds, doubled each retry (with jitter).
        timeout: seconds per request.
        temperature, max_tokens: sampling settings (part of the cache key).
        cache_path: SQLite file of the reply cache; ``None`` disables caching.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
        cache_path: str | os.PathLike | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache = ReplyCache(cache_path) if cache_path else None
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def _key(self, messages: list[dict[str, str]]) -> str:
        payload = json.dumps(
            {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _post(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
                time.sleep(delay)
            with self._count_lock:
                self.requests_sent += 1
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                payload = json.loads(raw.decode("utf-8"))
                try:
                    return payload["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    raise JudgeUnavailable(f"judge server at {url} answered without choices[0].message.content: {payload!r:.200}")
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:200]
                last_error = f"HTTP {error.code}: {detail}"
                if error.code not in RETRYABLE_STATUS:
                    raise JudgeUnavailable(f"judge server at {url} refused the request ({last_error})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                last_error = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            except http.client.IncompleteRead as error:
                # the connection closed before the body's Content-Length: a transient fault, retried like a 5xx
                read, more = len(error.partial), error.expected
                last_error = f"a reply with a cut-short body ({read} bytes read, {more} more expected)"
            except http.client.HTTPException as error:
                last_error = f"{type(error).__name__}: {error}"
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                # an overloaded proxy's HTML page, or a body cut short without a Content-Length: retried like a 5xx
                last_error = f"a reply with a body that is not JSON ({error}): {raw[:100]!r}"
            log.debug("judge request failed (attempt %d): %s", attempt + 1, last_error)
        where = f"; replies obtained so far are cached in {self.cache.path}" if self.cache else ""
        raise JudgeUnavailable(f"judge server at {url} failed after {self.max_retries + 1} attempts ({last_error}){where}")

    def complete(self, messages: list[dict[str, str]], accept: Callable[[str], bool] | None = None) -> str:
        """One reply, from the cache or the server.

        Args:
            messages: the conversation.
            accept: whether a reply is usable (a judge: whether it parses into a rating or verdict); default any
                non-empty reply. Only accepted replies are cached, and a cached reply that is not accepted (left
                by an older version) is asked for again, so an unparsable reply never outlives a rerun.

        Returns:
            The reply's text, accepted or not (the caller counts the ones it cannot use).
        """
        accept = accept or bool
        key = self._key(messages)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None and accept(cached):
                return cached
        reply = self._post(messages)
        if self.cache is not None and accept(reply):
            self.cache.put(key, reply)
        return reply

    def complete_many(
        self,
        conversations: list[list[dict[str, str]]],
        desc: str = "judging",
        accept: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Replies to many conversations, ``concurrency`` at a time, in order, with a progress bar.

        Args:
            conversations: the conversations to send.
            desc: the progress bar's label.
            accept: which replies may be cached (:meth:`complete`).
        """
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        futures = [pool.submit(self.complete, messages, accept) for messages in conversations]
        replies = []
        try:
            for future in tqdm(futures, desc=desc, leave=False, dynamic_ncols=True):
                replies.append(future.result())
        finally:
            # on the first failure, requests not yet started are dropped instead of each retrying in turn
            pool.shutdown(wait=True, cancel_futures=True)
        return replies

    def describe(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "temperature": self.temperature}
