"""PendingInputs.fill: rows of this step's input ids take the previous step's samples."""

import pytest
import torch

from engine.model_runner import PendingInputs
from engine.request import PENDING_TOKEN


@pytest.mark.parametrize(
    ("rows", "sources", "row_map"),
    [
        ([0, 1, 2], [0, 1, 2], None),  # the same sequences in the same order (the slice)
        ([0, 1, 2], [0, 1, 2], [0, 4, 8]),  # padded rows of a graph with 4 per sequence
        ([0, 1, 2], [2, 0, 1], None),  # reordered since the previous step
        ([1, 3], [0, 1], None),  # chunks in between
        ([0, 1], [0, 1], None),  # fewer sequences than the previous step sampled
    ],
)
def test_fill_puts_each_source_token_at_its_row(rows, sources, row_map) -> None:
    tokens = torch.tensor([101, 102, 103, 104])
    input_ids = torch.full((12,), PENDING_TOKEN, dtype=torch.int64)
    PendingInputs(rows, sources, tokens).fill(input_ids, row_map)
    expected = torch.full((12,), PENDING_TOKEN, dtype=torch.int64)
    for row, source in zip(rows, sources, strict=True):
        expected[row if row_map is None else row_map[row]] = tokens[source]
    assert torch.equal(input_ids, expected)
