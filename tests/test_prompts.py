"""Prompt builders and the permutation parser: pure functions, checked exactly and by property."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.rerank.llm.prompts import (listwise_messages, parse_permutation, rating_messages, render_plain,
                               sliding_windows, truncate_words, yes_no_messages)


@pytest.mark.parametrize("reply, n, expected", [
    ("[3] > [1] > [2]", 3, [2, 0, 1]),
    ("[2] > [3]", 3, [1, 2, 0]),                 # missing ids follow in input order
    ("[2] > [2] > [1] > [2]", 3, [1, 0, 2]),     # repeats dropped
    ("[7] > [0] > [3] > [-1]", 3, [2, 0, 1]),    # out of range dropped
    ("I cannot rank these.", 4, [0, 1, 2, 3]),   # nothing parsed: input order
    ("2 > 3 > 1", 3, [1, 2, 0]),                 # bare numbers when no brackets
    ("[ 2 ]>[1] (passage 3 is bad)", 3, [1, 0, 2]),  # brackets win over bare numbers
    ("", 0, []),
])
def test_parse_permutation_repairs(reply: str, n: int, expected: list[int]) -> None:
    assert parse_permutation(reply, n) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]> 0123456789abc,\n-")), max_size=80), st.integers(0, 25))
def test_parse_permutation_is_always_a_permutation(reply: str, n: int) -> None:
    assert sorted(parse_permutation(reply, n)) == list(range(n))


def test_parse_permutation_rejects_negative_n() -> None:
    with pytest.raises(ValueError):
        parse_permutation("[1]", -1)


def test_sliding_windows_go_bottom_up() -> None:
    assert sliding_windows(10, 4, 2) == [(6, 10), (4, 8), (2, 6), (0, 4)]
    assert sliding_windows(3, 20, 10) == [(0, 3)]
    assert sliding_windows(0, 20, 10) == []
    for window, step in ((0, 1), (True, 1), (2.0, 1), ("20", 10), (20, 0), (20, 2.5)):
        with pytest.raises(ValueError, match="(window|step) must be an integer >= 1"):
            sliding_windows(5, window, step)


@given(st.integers(1, 60), st.integers(1, 25), st.integers(1, 25))
def test_sliding_windows_cover_every_position(n: int, window: int, step: int) -> None:
    if step > window:
        with pytest.raises(ValueError):
            sliding_windows(n, window, step)
        return
    windows = sliding_windows(n, window, step)
    covered = {i for start, end in windows for i in range(start, end)}
    assert covered == set(range(n))
    assert windows[-1][0] == 0 and all(end - start <= window for start, end in windows)


def test_truncate_words() -> None:
    assert truncate_words("  a b  c d ", 2) == "a b"
    assert truncate_words(" a b ", None) == "a b"


def test_pointwise_prompts_carry_query_and_passage() -> None:
    for build in (yes_no_messages, rating_messages):
        messages = build("what causes rust?", "Iron oxidises in water.")
        assert [m["role"] for m in messages] == ["system", "user"]
        assert "what causes rust?" in messages[1]["content"] and "Iron oxidises" in messages[1]["content"]
    assert "Yes or No" in yes_no_messages("q", "p")[1]["content"]
    assert "from 0 to 5" in rating_messages("q", "p")[1]["content"]


def test_listwise_prompt_numbers_passages() -> None:
    content = listwise_messages("q?", ["alpha", "beta"])[1]["content"]
    assert "[1] alpha\n[2] beta" in content
    assert "2 passages" in content


def test_render_plain_ends_at_the_answer() -> None:
    text = render_plain([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text == "System: S\n\nUser: U\n\nAssistant:"
    assert render_plain([{"role": "user", "content": "U"}], bos="<bos>") == "<bos>User: U\n\nAssistant:"
