"""Tokenizing requests on a background thread, ahead of the engine that consumes them.

The fast tokenizer releases the GIL while it encodes, so chat templating and encoding overlap
the engine's steps. The queue is bounded (depth): the thread runs at most that many requests
ahead, so memory stays flat however large the shard.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

from engine import RequestError
from engine.tokenizer import PromptEncoder
from pipeline.plan import encode_request
from pipeline.rows import RowRequest

_DONE = object()


class TokenizeAhead:
    """Iterate to get (position, token ids or the RequestError naming the field) for every
    request, in the given order. Use as a context manager: leaving it stops the thread.
    An unexpected tokenizer exception is re-raised in the consumer."""

    def __init__(
        self, encoder: PromptEncoder, requests: Sequence[RowRequest], depth: int = 512
    ) -> None:
        self._encoder = encoder
        self._requests = requests
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenize-ahead", daemon=True)

    def __enter__(self) -> TokenizeAhead:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __iter__(self) -> Iterator[tuple[int, list[int] | RequestError]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for position, request in enumerate(self._requests):
                try:
                    result: list[int] | RequestError = encode_request(self._encoder, request)
                except RequestError as exc:
                    result = exc
                if not self._put((position, result)):
                    return
        except Exception as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
            return
        self._put(_DONE)
