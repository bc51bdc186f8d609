"""The one record type of prefalign: a preference pair.

A pair follows TRL's preference format: ``prompt``, ``chosen`` and ``rejected`` are either plain strings
or conversational lists of ``{"role", "content"}`` messages. On top of that every pair carries

* ``pair_id``: a stable identifier (the source's own id, or a content hash), used by every later stage
  (reference log-prob caches, score files, selection files) to refer to the pair;
* ``scores``: optional annotator scores that ship with the data (``score_chosen`` / ``score_rejected``, such
  as UltraFeedback's GPT-4 ratings or the built-in set's simulated annotator);
* ``metadata``: free per-pair information carried unchanged through every stage. Ground-truth columns of
  synthetic data (``label_flipped``, ``ambiguous``) live here; training, scoring and selection never read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
Text = str | list[Message]

# roles a prompt's messages may have; a completion is the model's own turn, so only "assistant"
PROMPT_ROLES = ("system", "user", "assistant")
COMPLETION_ROLES = ("assistant",)


class DataError(ValueError):
    """Raised for malformed preference data; the message names the file, row and key."""


@dataclass
class PreferencePair:
    """One preference pair ``(x, y_w, y_l)`` with ``y_w`` (chosen) preferred over ``y_l`` (rejected)."""

    pair_id: str
    prompt: Text
    chosen: Text
    rejected: Text
    scores: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-serialisable form (the format of the built-in files and of exported subsets)."""
        return {
            "pair_id": self.pair_id,
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            **{key: value for key, value in self.scores.items()},
            "metadata": self.metadata,
        }


def content_id(prompt: Text, chosen: Text, rejected: Text) -> str:
    """A stable id from the content of a pair (first 16 hex digits of a SHA-1)."""
    payload = json.dumps([prompt, chosen, rejected], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def validate_text(
    value: Any, *, key: str, where: str, allow_empty_list: bool = False, roles: tuple[str, ...] = PROMPT_ROLES
) -> Text:
    """Check that ``value`` is a string or a list of chat messages; raise a :class:`DataError` naming ``where``.

    Args:
        value: the prompt or completion as read.
        key: its column name, for the message.
        where: the file and row (``data.jsonl:12``), for the message.
        allow_empty_list: accept an empty message list.
        roles: the roles a message may have (:data:`PROMPT_ROLES`, or :data:`COMPLETION_ROLES` for a completion).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value and not allow_empty_list:
            raise DataError(f"{where}: key '{key}' is an empty message list")
        for index, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(
                    f"{where}: key '{key}' message {index} must be a dict with 'role' and 'content', got {message!r:.80}"
                )
            if message["role"] not in roles:
                raise DataError(
                    f"{where}: key '{key}' message {index} has role {message['role']!r:.40}; "
                    f"expected {' or '.join(repr(role) for role in roles)}"
                )
            if not isinstance(message["content"], str):
                raise DataError(f"{where}: key '{key}' message {index} has non-string content")
        return value
    raise DataError(
        f"{where}: key '{key}' must be a string or a list of {{'role', 'content'}} messages, got {type(value).__name__}"
    )


def text_of(value: Text) -> str:
    """Plain text of a string or of a message list (used for emptiness and identity checks)."""
    if isinstance(value, str):
        return value
    return "\n".join(message["content"] for message in value)


def pairs_fingerprint(pairs: list[PreferencePair]) -> str:
    """Identifies a list of pairs by content: ids, prompts and completions, in order (16 hex digits).

    Independent of any tokenizer, so a selection made with one model's scores can be checked against the data
    another model trains on.
    """
    digest = hashlib.sha1()
    for pair in pairs:
        digest.update(json.dumps([pair.pair_id, pair.prompt, pair.chosen, pair.rejected], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
