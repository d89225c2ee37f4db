"""The host batch's view of a step: which trailing sequences are whole prompts."""

from engine.model_runner import HostBatch


def host_batch(chunks: list[tuple[int, int]]) -> HostBatch:
    """A host batch of (context_len, query_len) chunks; only the lengths matter here."""
    cu, context_lens = [0], []
    for context_len, query_len in chunks:
        cu.append(cu[-1] + query_len)
        context_lens.append(context_len)
    return HostBatch([], [], [], [[0]] * len(chunks), cu, context_lens, [])


def test_trailing_prompts_are_the_last_chunks_that_cover_their_whole_context() -> None:
    batch = host_batch([(9, 1), (30, 6), (7, 7), (13, 13)])
    assert batch.trailing_prompts() == (2, 13)


def test_a_prompt_before_a_continuing_chunk_is_not_trailing() -> None:
    assert host_batch([(7, 7), (30, 6)]).trailing_prompts() == (2, 0)


def test_decodes_and_one_token_prompts_are_not_prompts() -> None:
    assert host_batch([(9, 1), (1, 1)]).trailing_prompts() == (2, 0)
    assert host_batch([(5, 5), (1, 1)]).trailing_prompts() == (2, 0)


def test_a_step_of_only_prompts_starts_at_the_first() -> None:
    assert host_batch([(5, 5), (3, 3)]).trailing_prompts() == (0, 5)
