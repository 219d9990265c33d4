"""The server-side store of past responses (`store: true`), bounded in entries and bytes.

What `previous_response_id` continues from is kept with each response: the conversation as chat
messages (the instructions left out, as OpenAI does: a new request brings its own). The oldest
responses go first when either bound is reached; the store lives in the process (a restart or
another replica does not have it). Only the event loop touches it, so it takes no lock.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from services.common.errors import NotFound

from .protocol import ResponsesResponse


class ResponseNotFound(NotFound):
    code = "response_not_found"

    def __init__(self, response_id: str, param: str | None = None):
        super().__init__(f"Response with id '{response_id}' not found.", param=param)


@dataclass
class Stored:
    response: ResponsesResponse
    conversation: list[dict[str, Any]]  # chat messages: the input (without instructions) and the output
    size: int


class ResponseStore:
    def __init__(self, max_items: int = 1000, max_bytes: int = 64 * 2**20):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: ResponsesResponse, conversation: list[dict[str, Any]]) -> bool:
        """Keep `response`; False when it alone is over the byte bound (or storing is off)."""
        size = len(response.model_dump_json()) + len(json.dumps(conversation))
        if self.max_items == 0 or size > self.max_bytes:
            return False
        self._drop(response.id)
        self._items[response.id] = Stored(response, conversation, size)
        self.bytes += size
        while len(self._items) > self.max_items or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def get(self, response_id: str, param: str | None = None) -> Stored:
        stored = self._items.get(response_id)
        if stored is None:
            raise ResponseNotFound(response_id, param)
        return stored

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        self._drop(response_id)

    def _drop(self, response_id: str) -> None:
        stored = self._items.pop(response_id, None)
        if stored is not None:
            self.bytes -= stored.size
