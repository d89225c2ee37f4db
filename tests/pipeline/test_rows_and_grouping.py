from __future__ import annotations

import pytest

from engine import SamplingParams
from pipeline.config import JobConfig
from pipeline.grouping import group_requests, order_requests, predict_cached_tokens
from pipeline.rows import InputRow, PreparedRow, prepare_row, prepare_rows

GREEDY = SamplingParams(max_tokens=4, temperature=0.0)
SYSTEM = "You are a helpful assistant who answers in one sentence. " * 3


def _columns(**input_section):
    section = {"url": "x", "prompt_column": "prompt", "messages_column": "messages"}
    section.update(input_section)
    return JobConfig.from_dict(
        {"model": "m", "input": section, "output": {"url": "o"}}
    ).input.columns


def _prepare(values: dict, index: int = 0, **input_section) -> PreparedRow:
    return prepare_row(
        InputRow(index, "f.parquet", index, values), _columns(**input_section), GREEDY
    )


def _chat(user: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({}, "row 17: prompt: missing (and messages is null)"),
        ({"prompt": ""}, "row 17: prompt: empty"),
        ({"prompt": " \t"}, "row 17: prompt: empty"),
        ({"prompt": 5}, "row 17: prompt: expected a string, got int"),
        ({"messages": []}, "row 17: messages: empty list"),
        ({"messages": "not json"}, "row 17: messages: invalid JSON"),
        ({"messages": {"role": "user"}}, "row 17: messages: expected a list"),
        ({"messages": [{"content": "hi"}]}, "row 17: messages[0].role: missing"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "row 17: messages[0].content: expected a string",
        ),
        ({"messages": ["hi"]}, "row 17: messages[0]: expected an object"),
        ({"messages": [{"role": "user", "content": " "}]}, "row 17: messages[0].content: empty"),
        ({"prompt": "hi", "mt": -1}, "row 17: mt: max_tokens must be at least 1, got -1"),
        ({"prompt": "hi", "mt": 2.5}, "row 17: mt: max_tokens must be an integer, got 2.5"),
        ({"prompt": "hi", "temp": "hot"}, "row 17: temp: temperature must be a number"),
    ],
)
def test_invalid_rows_get_an_error_naming_row_and_field(values, error):
    row = _prepare(values, 17, override_columns={"max_tokens": "mt", "temperature": "temp"})
    assert row.request is None and row.error is not None
    assert row.error.startswith(error)


def test_override_columns_set_per_row_params_and_null_keeps_the_default():
    cols = {"override_columns": {"max_tokens": "mt", "seed": "s"}}
    row = _prepare({"prompt": "hi", "mt": 7.0, "s": None}, **cols)
    assert row.request is not None
    assert row.request.params == SamplingParams(max_tokens=7, temperature=0.0)


def test_content_ids_are_stable_and_distinct_for_identical_rows():
    first = _prepare({"prompt": "same"}, 0)
    second = _prepare({"prompt": "same"}, 1)
    assert first.row_id != second.row_id
    assert _prepare({"prompt": "same"}, 0).row_id == first.row_id


def test_repeated_user_ids_are_errors_with_unique_suffixed_ids():
    rows = [InputRow(i, "f", i, {"id": "a", "prompt": "p"}) for i in range(3)]
    prepared = list(prepare_rows(rows, _columns(id_column="id"), GREEDY))
    assert [p.row_id for p in prepared] == ["a", "a#row1", "a#row2"]
    assert prepared[1].error == "row 1: id: duplicate id 'a' (first at row 0)"


def test_identical_deterministic_requests_are_grouped_and_sampled_ones_are_not():
    rows = [
        _prepare({"prompt": "dup"}, 0),
        _prepare({"prompt": "other"}, 1),
        _prepare({"prompt": "dup"}, 2),
        _prepare({"prompt": "dup", "t": 0.8}, 3, override_columns={"temperature": "t"}),
        _prepare({"prompt": "dup", "t": 0.8}, 4, override_columns={"temperature": "t"}),
        _prepare({}, 5),
    ]
    unique = group_requests(rows, dedup=True)
    assert [[r.row.row_index for r in u.rows] for u in unique] == [[0, 2], [1], [3], [4]]
    assert len(group_requests(rows, dedup=False)) == 5


def test_prefix_grouping_sorts_requests_sharing_a_system_prompt_next_to_each_other():
    other = "You translate English into French and reply with the translation only. " * 3
    rows = [
        _prepare({"messages": _chat("What is rain?")}, 0),
        _prepare({"messages": _chat("Good morning", other)}, 1),
        _prepare({"messages": _chat("Why is snow white?")}, 2),
        _prepare({"prompt": "Write a haiku."}, 3),
        _prepare({"messages": _chat("Thank you", other)}, 4),
        _prepare({"messages": _chat("How do clouds form?")}, 5),
    ]
    unique = group_requests(rows, dedup=True)
    # plain prompts first, then chats by system prompt, then by user text
    ordered = order_requests(unique, prefix_grouping=True)
    assert [u.rows[0].row.row_index for u in ordered] == [3, 5, 0, 2, 1, 4]
    unordered = order_requests(unique, prefix_grouping=False)
    assert [u.rows[0].row.row_index for u in unordered] == [0, 1, 2, 3, 4, 5]


def test_predicted_cached_tokens_count_seen_full_blocks_but_never_the_last_token():
    block = 4
    shared = list(range(100, 108))  # two full blocks
    prompts = [
        shared + [1, 2, 3],  # first: nothing cached
        shared + [4, 5, 6],  # both shared blocks cached -> 8
        shared,  # 8 tokens: the last token's block is never served -> 1 block -> 4
        [7, 8, 9, 10, 11],  # unrelated -> 0
        list(range(100, 104)) + [0, 0, 0, 0, 9],  # first block only -> 4
    ]
    assert predict_cached_tokens(prompts, block) == 8 + 4 + 4
    assert predict_cached_tokens([shared + [1], shared + [1]], block) == 8


def test_a_plain_prompt_becomes_one_user_message_when_the_chat_template_is_asked():
    from pipeline.config import InputConfig
    from pipeline.rows import PromptKind

    columns = InputConfig(url="x.parquet", apply_chat_template=True).columns
    row = InputRow(0, "x.parquet", 0, {"prompt": "Name a color."})
    request = prepare_row(row, columns, SamplingParams(temperature=0)).request
    assert request is not None and request.kind is PromptKind.CHAT
    assert list(request.messages or ()) == [{"role": "user", "content": "Name a color."}]
    plain = prepare_row(row, InputConfig(url="x.parquet").columns, SamplingParams()).request
    assert plain is not None and plain.kind is PromptKind.TEXT
    with pytest.raises(ValueError, match="apply_chat_template"):
        InputConfig(url="x.parquet", apply_chat_template="yes")
