"""From token bytes to text, as a request grows: stop strings, and the text that is safe to stream.

Lesson: lessons/08-serving.py

Two questions come back after every sampled token, and both are answered on *bytes*, never by
decoding the whole output again:

1. Does the output now contain a stop string?  StopMatcher looks only at the bytes that can end a
   match that was not there before (the new token's bytes), so the work per token does not grow
   with the output's length or with the number of stop strings: the stop strings are grouped by
   length into sets, and each new end position asks one set lookup per distinct length.
   Matching the UTF-8 bytes finds exactly what matching the text finds: a valid character's
   encoding can only start at a character boundary (UTF-8 is self-synchronizing).

2. Which text can a stream send now without taking it back later?  TextStream holds back the last
   (longest stop string - 1) bytes, which might be the start of a stop string that the next token
   completes, and a trailing half of a multi-byte character. What it sends is always a prefix of
   the final text.

The engine thread does (1) for every request, because it decides when a request finishes. (2) is
for whoever shows the text: the offline LLM does it in step(), the server in each client's own
handler thread (tinyinfer/engine/server.py), so the engine thread never decodes for a client.
"""
from __future__ import annotations


class StopMatcher:
    """The stop strings of one request, as UTF-8 bytes grouped by length."""

    def __init__(self, stop: list[str]):
        self.by_length: dict[int, set[bytes]] = {}
        for s in stop:
            data = s.encode("utf-8")
            self.by_length.setdefault(len(data), set()).add(data)
        self.max_len = max(self.by_length, default=0)  # bytes of the longest stop string

    def find(self, data: bytearray, start: int) -> int | None:
        """The earliest byte offset where a stop string begins, among matches that end after
        data[:start] (the bytes before start were searched already). None if there is none."""
        best = None
        for end in range(start + 1, len(data) + 1):
            for length, group in self.by_length.items():
                begin = end - length
                if begin >= 0 and (best is None or begin < best) and bytes(data[begin:end]) in group:
                    best = begin
        return best


class TextStream:
    """Turns the growing bytes of one output into text increments that never change later."""

    def __init__(self, hold_bytes: int = 0):
        self.data = bytearray()
        self.hold_bytes = hold_bytes  # longest stop string - 1 (0 without stop strings)
        self.num_sent_chars = 0

    def add(self, token_bytes: bytes) -> str:
        """Append one step's bytes -> the text that became safe to show (often "")."""
        self.data += token_bytes
        safe = len(self.data) - self.hold_bytes
        if safe <= 0:
            return ""
        # A cut in the middle of a character decodes to a trailing U+FFFD: wait for its other bytes.
        text = self.data[:safe].decode("utf-8", errors="replace").rstrip("\ufffd")
        return self.take(text)

    def finish(self, final_text: str) -> str:
        """The rest of the final text (the engine cut it at a stop string or before a stop token)."""
        return self.take(final_text)

    def take(self, text: str) -> str:
        new = text[self.num_sent_chars:]
        self.num_sent_chars = max(self.num_sent_chars, len(text))
        return new
