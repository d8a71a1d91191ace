"""From generated tokens to the text a client sees: incremental detokenization and stop strings.

A stop string can straddle tokens, so while streaming the last `longest stop - 1` characters are held
back until they can no longer begin a stop string (what vLLM and llama.cpp's server do). The text
returned never contains the stop string, as OpenAI specifies.
"""

from __future__ import annotations

from collections.abc import Sequence

from ferry_runtime.generative.tokenizer import TokenTextStream


class TextAssembler:
    __slots__ = ("_emitted", "_hold", "_stops", "_stream", "stopped", "text")

    def __init__(self, stream: TokenTextStream, stops: Sequence[str]) -> None:
        self._stream = stream
        self._stops = tuple(stop for stop in stops if stop)
        self._hold = max((len(stop) for stop in self._stops), default=1) - 1
        # Everything decoded so far, and how much of it has been handed out.
        self.text = ""
        self._emitted = 0
        # True once a stop string ended the text.
        self.stopped = False

    def feed(self, tokens: Sequence[int]) -> str:
        """The new text that is safe to show after these tokens (may be empty)."""
        if self.stopped:
            return ""
        start = len(self.text)
        for token in tokens:
            self.text += self._stream.step(token)
        if self._stops:
            # A match can begin up to `hold` characters before the new text.
            search_from = max(0, start - self._hold)
            found = [i for i in (self.text.find(stop, search_from) for stop in self._stops) if i >= 0]
            if found:
                self.text = self.text[: min(found)]
                self.stopped = True
                return self._take(len(self.text))
        return self._take(len(self.text) - self._hold)

    def finish(self) -> str:
        """What was held back, once the generation has ended."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        piece = self.text[self._emitted : end]
        self._emitted = end
        return piece
