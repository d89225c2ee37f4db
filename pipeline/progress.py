"""The run's progress bar: rows done out of rows to do, generated tokens/s, ETA (tqdm)."""

from __future__ import annotations

import time
from typing import Any


class RunProgress:
    """A tqdm bar over rows; every method is a no-op when disabled."""

    def __init__(self, total_rows: int, enabled: bool) -> None:
        self._bar: Any = None
        self._tokens = 0
        self._started = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_rows, desc="batchgen", unit="row", dynamic_ncols=True)

    def advance(self, num_rows: int, num_generated_tokens: int = 0) -> None:
        self._tokens += num_generated_tokens
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            self._bar.set_postfix(out_tok_s=f"{self._tokens / elapsed:.1f}", refresh=False)
            self._bar.update(num_rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
