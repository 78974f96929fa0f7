"""The one error the double raises internally: an HTTP status plus Consul's answer text."""

from __future__ import annotations


class DoubleError(Exception):
    """A request failed; ``status`` and ``text`` are what Consul would answer."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text
