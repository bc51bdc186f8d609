"""A client for OpenAI-compatible chat-completion servers (OpenAI, vLLM, llama.cpp, ...), through ``openai``.

Used by the LLM judges and the ``llm_judge`` score. Requests go through the ``openai`` package
(``openai.OpenAI(base_url=..., api_key=..., timeout=..., max_retries=...)``), which retries connection errors,
timeouts and HTTP 408/409/429/5xx with its exponential backoff (0.5 s doubling up to 8 s, or the server's
``Retry-After``). A 200 whose body is not a chat completion (an overloaded proxy's HTML page, a body that is not
JSON) is not retried by ``openai``; this client retries it ``max_retries`` times itself, after ``backoff``
seconds doubled each time. Requests run concurrently (a thread pool of ``concurrency`` workers). Every reply
the caller accepts (a judge accepts the replies it can parse) is cached on disk (SQLite, keyed by model,
messages and sampling settings), so a re-run costs nothing and an interrupted run keeps what it obtained; an
empty or refused reply is never cached, so a re-run asks for it again instead of keeping a transient fault of
the server. When the retries run out, :class:`JudgeUnavailable` names the URL and what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# sent when no key is configured: local servers (vLLM, llama.cpp) ignore it, and ``openai`` insists on one
NO_KEY = "no-key"
# the statuses below 500 that openai retries (all of 5xx too): past its retries they mean "failed", not "refused"
RETRIED_STATUS = {408, 409, 429}


class JudgeUnavailable(RuntimeError):
    """The judge server could not be reached or kept failing; obtained replies stay in the cache."""


class MalformedReply(RuntimeError):
    """A 200 reply whose body is not a chat completion (retried by :class:`ChatClient` itself)."""


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


def _error_detail(error: BaseException) -> str:
    """What went wrong in an ``openai`` exception, with the transport error underneath (a refused connection,
    a body cut short: ``peer closed connection without sending complete message body``)."""
    if isinstance(error, openai.APIStatusError):
        body = error.response.text[:200] if error.response is not None else ""
        return f"HTTP {error.status_code}: {body}"
    cause = error.__cause__ or error.__context__
    if cause is not None:
        return f"{type(error).__name__} ({type(cause).__name__}: {cause})"
    return f"{type(error).__name__}: {error}"


class ChatClient:
    """Chat completions from an OpenAI-compatible server.

    Args:
        base_url: server root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: the model name sent with each request.
        api_key_env: environment variable holding the API key (may be unset for local servers).
        concurrency: requests in flight at once.
        max_retries: retries per request after the first attempt (``openai``'s for HTTP and connection
            errors; this client's for 200 replies that are not a chat completion).
        backoff: first delay in seconds of this client's own retries (a malformed 200), doubled each retry
            (with jitter); ``openai`` times its retries itself.
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
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.concurrency = max(1, int(concurrency))
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache = ReplyCache(cache_path) if cache_path else None
        # one client for all threads (it pools connections); building it sends nothing
        self._openai = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or NO_KEY, timeout=self.timeout, max_retries=self.max_retries
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _key(self, messages: list[dict[str, str]]) -> str:
        payload = json.dumps(
            {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _create(self, messages: list[dict[str, str]]) -> str:
        """One completion through ``openai`` (with its retries); :class:`MalformedReply` for a 200 that is not a
        chat completion."""
        try:
            completion = self._openai.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens
            )
        except ValueError as error:  # a JSON content type with a body that does not parse (cut short, say)
            raise MalformedReply(f"a reply with a body that is not JSON ({error})") from error
        if isinstance(completion, str):  # openai hands back the text of a 200 that is not JSON
            raise MalformedReply(f"a reply with a body that is not JSON: {completion[:100]!r}")
        try:
            return completion.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise JudgeUnavailable(
                f"judge server at {self.url} answered without choices[0].message.content: {completion!r:.200}"
            ) from None

    def _post(self, messages: list[dict[str, str]]) -> str:
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            try:
                return self._create(messages)
            except MalformedReply as error:
                last_error = str(error)
                log.debug("judge request failed (attempt %d): %s", attempt + 1, last_error)
                continue
            except openai.APIConnectionError as error:  # openai retried it max_retries times (timeouts too)
                last_error = _error_detail(error)
            except openai.APIStatusError as error:
                last_error = _error_detail(error)
                if error.status_code not in RETRIED_STATUS and error.status_code < 500:
                    unset = f"; ${self.api_key_env} is not set" if self.api_key_env and not self.api_key else ""
                    raise JudgeUnavailable(f"judge server at {self.url} refused the request ({last_error}{unset})") from None
                # a status openai retried max_retries times already
            break
        where = f"; replies obtained so far are cached in {self.cache.path}" if self.cache else ""
        raise JudgeUnavailable(f"judge server at {self.url} failed after {self.max_retries + 1} attempts ({last_error}){where}")

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
        return {"base_url": self.base_url, "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}
