"""Conversations: checking a list of `{role, content}` messages and applying a chat template.

Used by training data (engine.data), generation (engine.generation), the live server
(engine.live) and the PPO and GRPO rollouts (engine.rollouts). Torch-free: it needs only a
tokenizer object with `apply_chat_template`.
"""

from __future__ import annotations

from engine.protocol import DataError


def check_messages(value, key: str) -> None:
    """Raise DataError unless `value` is a non-empty list of messages with string role and content.

    `key` names the field in the message (e.g. "prompt", "messages").
    """
    if not isinstance(value, list) or not value:
        raise DataError(f"{key} must be a non-empty list of {{role, content}} messages")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise DataError(f"{key}: each message needs string 'role' and 'content'")


def chat_ids(tokenizer, messages, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, as a plain list.

    With `add_generation_prompt`, the template's opening of an assistant turn is appended
    (what a prompt to generate from needs).
    """
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
