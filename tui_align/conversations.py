"""Conversations as a tree: a turn is a user message, its responses the candidates shown for it.

A turn's parent is the response it answers; the reply the person chose (`responses.chosen`)
continues the conversation, and its unchosen siblings stay in the tree as the feedback's
context. The chosen path from the first turn is the conversation the model sees next.
"""

from __future__ import annotations

import json
import time


class Conversations:
    """Mixed into SessionStore: needs `self.db` (an open sqlite_utils Database)."""

    def new_conversation(self, system: str | None = None) -> int:
        return self.db["conversations"].insert({"created": time.time(), "system": system}).last_pk

    def latest_conversation(self) -> int | None:
        row = self.db.execute("select max(id) from conversations").fetchone()
        return row[0]

    def add_user_turn(self, conversation_id: int, text: str, parent_id: int | None = None) -> int:
        """A user message; `parent_id` is the response it answers (default: the end of the chosen path).

        If the chosen path ends in a turn nobody chose a reply for, the new turn becomes its
        sibling (the person asked again instead).
        """
        if parent_id is None:
            path = self._chosen_path(conversation_id)
            if path:
                turn, response = path[-1]
                parent_id = response["id"] if response else turn["parent_id"]
        return self.db["turns"].insert({
            "conversation_id": conversation_id, "parent_id": parent_id, "text": text, "created": time.time(),
        }).last_pk

    def add_responses(self, turn_id: int, candidates: list[dict], version: int | list[int] | None, sampling: dict,
                      shown_order: list[int] | None = None, source: str = "model") -> list[int]:
        """Store the engine's candidates (its `done` payload) under a turn; returns their ids.

        `version`: the adapter version that produced them, or one per candidate (an arena round).
        `shown_order` lists candidate indices as shown, left to right (or top to bottom):
        [1, 0] means candidate 1 was shown first.
        """
        order = shown_order or list(range(len(candidates)))
        versions = version if isinstance(version, list) else [version] * len(candidates)
        now, ids = time.time(), []
        with self.db.atomic():
            for i, c in enumerate(candidates):
                ids.append(self.db["responses"].insert({
                    "turn_id": turn_id, "text": c["text"], "source": source, "version": versions[i],
                    "sampling": json.dumps(sampling), "tokens": c.get("tokens"), "finish_reason": c.get("finish_reason"),
                    "ttft_s": c.get("ttft_s"), "tokens_per_s": c.get("tokens_per_s"),
                    "shown_position": order.index(i) if i in order else None, "chosen": 0, "created": now,
                }).last_pk)
        return ids

    def choose(self, turn_id: int, response_id: int | None) -> None:
        """Mark the response that continues the conversation (its siblings stay in the tree; None: no
        reply continues it). A picked reply that no longer continues it stops being an SFT example."""
        self.db.execute("update responses set chosen = (id is ?) where turn_id = ?", [response_id, turn_id])
        self.db.execute("""update examples set withdrawn = 1 where turn_id = ? and method = 'sft'
                           and source = 'preference' and response_id is not ?""", [turn_id, response_id])

    def responses(self, turn_id: int) -> list[dict]:
        return list(self.db["responses"].rows_where("turn_id = ?", [turn_id], order_by="id"))

    def _chosen_path(self, conversation_id: int) -> list[tuple[dict, dict | None]]:
        """(turn, chosen response or None) from the first turn along chosen replies (latest sibling wins)."""
        path, parent = [], None
        while True:
            where = "conversation_id = ? and parent_id is ?"
            turns = list(self.db["turns"].rows_where(where, [conversation_id, parent], order_by="id desc", limit=1))
            if not turns:
                return path
            chosen = list(self.db["responses"].rows_where("turn_id = ? and chosen = 1", [turns[0]["id"]], limit=1))
            path.append((turns[0], chosen[0] if chosen else None))
            if not chosen:
                return path
            parent = chosen[0]["id"]

    def _system(self, conversation_id: int) -> list[dict]:
        system = self.db["conversations"].get(conversation_id)["system"]
        return [{"role": "system", "content": system}] if system is not None else []

    def history(self, conversation_id: int) -> list[dict]:
        """The conversation as {role, content} messages along the chosen path (the next prompt)."""
        messages = self._system(conversation_id)
        for turn, response in self._chosen_path(conversation_id):
            messages.append({"role": "user", "content": turn["text"]})
            if response:
                messages.append({"role": "assistant", "content": response["text"]})
        return messages

    def prompt(self, turn_id: int) -> list[dict]:
        """The messages that led to this turn, ending with its user message (system first)."""
        messages, turn = [], self.db["turns"].get(turn_id)
        conversation_id = turn["conversation_id"]
        while True:
            messages.append({"role": "user", "content": turn["text"]})
            if turn["parent_id"] is None:
                break
            response = self.db["responses"].get(turn["parent_id"])
            messages.append({"role": "assistant", "content": response["text"]})
            turn = self.db["turns"].get(response["turn_id"])
        return self._system(conversation_id) + messages[::-1]
