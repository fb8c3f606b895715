"""The labelled grading corpus (``tests/data/grading_corpus.py``): the shipped grader agrees with the labels, each case
is graded fast, and the too-large class ends within the bound. CPU, offline."""

from __future__ import annotations

import collections
import time

import pytest
from data.grading_corpus import Case, cases  # tests/ is on sys.path (rootdir conftest)

from apo.tasks.rewards import DEFAULT_TIMEOUT_S, math_reward

REQUIRED_TAGS = {
    "integer", "negative", "decimal", "fraction", "mixed", "radical", "pi", "interval", "set", "tuple", "degrees",
    "units", "percent", "text", "equation_value", "equation", "spacing", "thousands", "comma_number", "gsm8k", "boxes",
    "check", "think", "restated", "truncated", "empty", "huge", "too_large", "paren", "unboxed_frac", "fmt_boxed",
    "fmt_final",
    "final_forms", "unworked", "stated", "marker_noise", "joined", "prose", "decimal_comma", "end_token", "quotes",
    "foreign", "several_boxes",
}  # fmt: skip


def grade(case: Case) -> float:
    """The shipped grader (``math_reward``) on one case."""
    prompts = [case.prompt] if case.prompt else None
    return math_reward([case.completion], answer=[case.gold], prompts=prompts, answer_format=case.answer_format)[0]


def test_corpus_covers_the_answer_forms():
    corpus = cases()
    assert len(corpus) >= 300
    tags = collections.Counter(c.tag.split("/")[0] for c in corpus)
    assert REQUIRED_TAGS <= set(tags), REQUIRED_TAGS - set(tags)
    labels = collections.Counter(c.expected for c in corpus)
    assert labels[1.0] >= 100 and labels[0.0] >= 100  # both kinds of error are measurable


def test_shipped_grader_agrees_with_the_labels_and_is_fast():
    grade(Case("warm-up", "\\boxed{1+x^2}", "x^2+1", 1))  # starts the grader process (math-verify needed)
    mismatches, slow = [], []
    for case in cases():
        t0 = time.perf_counter()
        score = grade(case)
        elapsed = time.perf_counter() - t0
        if score != case.expected:
            mismatches.append((case.tag, str(case.completion)[:80], case.gold[:40], case.expected, score))
        limit = DEFAULT_TIMEOUT_S + 30 if case.tag == "too_large" else 1.0
        if elapsed > limit:
            slow.append((case.tag, str(case.completion)[:80], round(elapsed, 2)))
    agreement = 1 - len(mismatches) / len(cases())
    assert agreement >= 0.99, mismatches
    assert all(m[0] == "known_limit" for m in mismatches), mismatches  # every other case is graded as labelled
    assert not slow, slow


@pytest.mark.parametrize("fmt", ["boxed", "final", "auto", None])
def test_every_format_gives_no_credit_for_a_truncated_trace_or_an_empty_gold(fmt):
    out = math_reward(["<think>\nso 36, hmm, so maybe \\boxed{36}", "\\boxed{}", "\\boxed{5}"], answer=["36", "", ""],
                      answer_format=fmt)  # fmt: skip
    assert out == [0.0, 0.0, 0.0]
