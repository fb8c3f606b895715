r"""An external grading corpus: labelled (gold, output, label) cases taken from the grader tests of other projects, to
measure the shipped grader against labels it was not written with. Read by ``tests/test_external_grading_corpus.py``
and ``benchmarks/grading.py --external``.

``external_grading_corpus.jsonl`` holds one case per line: ``id``, ``source`` (GitHub repository), ``commit``,
``path`` and ``test`` (the test function that asserts the label), ``licence`` (the repository's licence, which allows
the reuse of these test data with the source named), ``gold``, ``output`` (the model output or extracted answer the
source grades), ``label`` (1: the source's grader must give credit, 0: must not) and, where the source's assertion
used non-default options, ``options``. Only data are taken (the strings and the asserted label), no code; cases that
repeat a (gold, output) pair already taken are left out. Where a source asserts its equivalence in both directions
(NeMo-Skills' ``math_equal(a, b)`` and ``math_equal(b, a)``), both directions are cases (``test`` ends in
``(reversed)``).

How a case is graded here (``gold_column``): a gold that holds ``\boxed`` is a MATH-style ``solution`` (the grader
reads its boxes); a gold of more than 100 characters with a final-answer marker is a worked solution whose answer is
the marker's (``Final Answer: The final answer is $28 \%$``); any other gold is the ``answer`` column as it stands.
The output is the completion.

Every case on which the shipped grader and the source disagree is listed below under one class:

- ``POLICY``: this project's documented rule (``docs/rewards.md``) differs from the source's on purpose;
- ``DEBATABLE``: the source's label rests on an option or an input one can argue with (a rounding option, malformed
  LaTeX, a label that contradicts the mathematics);
- ``GRADER_ERRORS``: the shipped grader is wrong; left as known limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

CORPUS = Path(__file__).with_name("external_grading_corpus.jsonl")

LICENCES = {
    "huggingface/Math-Verify": "Apache-2.0",
    "huggingface/lighteval": "MIT",
    "NVIDIA/NeMo-Skills": "Apache-2.0",
    "hendrycks/math": "MIT",
    "allenai/open-instruct": "Apache-2.0",
    "rllm-org/rllm": "MIT",
    "huggingface/trl": "Apache-2.0",
}
"""The licence of each source repository: its LICENSE/LICENCE file (rllm: the licence classifier of its
``pyproject.toml``; NeMo-Skills: the Apache-2.0 header of the test file). Math-Verify's ``tests/test_all.py`` also
carries an MIT header, from lighteval, where these tests began."""


class ExternalCase(NamedTuple):
    id: str
    source: str
    commit: str
    path: str
    test: str
    licence: str
    gold: str
    output: str
    label: int
    options: dict | None = None


def cases() -> list[ExternalCase]:
    """Every case of ``external_grading_corpus.jsonl``, in file order."""
    with CORPUS.open(encoding="utf-8") as f:
        return [ExternalCase(**json.loads(line)) for line in f if line.strip()]


def gold_column(gold: str) -> tuple[str, str]:
    """``(column, value)`` that presents a source's gold to ``math_reward``: ``("solution", gold)`` for a gold that
    holds a box, ``("answer", marker's answer)`` for a worked solution of more than 100 characters with a
    final-answer marker, else ``("answer", gold)``."""
    from apo.tasks.grading import _last_marker

    if "\\boxed" in gold:
        return "solution", gold
    marker = _last_marker(gold) if len(gold) > 100 else None
    if marker is not None and marker[1]:
        return "answer", marker[1]
    return "answer", gold


_MC = "multiple choice in prose: a choice letter is read from a box, after a marker or bare; the gold is the letter"

POLICY: dict[str, str] = {
    "x027": "an expression of the value is not a stated value: (9+1) for 10",
    "x034": "a fraction not in lowest terms is not a stated value: \\frac3{3} for 1",
    "x099": "an equation between two different numbers: x=1/3 \\approx 1.3",
    "x120": "plain numbers compare exactly: 0.0833333333333333 is not 1/12",
    "x368": "plain numbers compare exactly: 0.3333 is not 1/3 (the source rounds to 4 digits)",
    "x369": "plain numbers compare exactly: \\sqrt{17} is not the 15-digit decimal 4.123105625617661",
    "x288": "sets and lists compare without order (MATH's string grader keeps the order)",
    "x295": "sets and lists compare without order (MATH's string grader keeps the order)",
    "x312": "no format is required: rllm's reward also asks for </think> and a box",
    "x313": "no format is required: rllm's reward also asks for a box",
    "x327": "no format is required: rllm's reward also asks for </think> and a box",
    "x366": "no format is required: TRL's reasoning_accuracy_reward asks for </think>",
    "x371": _MC,
    "x372": _MC,
    "x375": _MC,
    "x377": _MC,
    "x378": _MC,
    "x379": _MC,
    "x380": _MC,
    "x381": _MC,
    "x382": _MC,
    "x383": _MC,
    "x384": _MC,
}
"""Disagreements where this project's documented rule differs from the source's on purpose."""

DEBATABLE: dict[str, str] = {
    "x028": "labelled 0 because the math span is broken across lines (Answer $ 9 $): a reader sees 9",
    "x029": "labelled 0 because the math span is broken across lines (Answer \\( 9 \\)): a reader sees 9",
    "x127": "labelled 1 at the source's rounding option: 0.33 and 0.2 for 1/3 and 1/5 in a matrix",
    "x133": "labelled 1 at the source's rounding option: (0.6, 2.6667] for (3/5, 8/3]",
    "x179": "the output's LaTeX is escaped twice (-2 \\\\le x \\\\le 7): a line break, not a relation",
    "x204": "the gold's box is escaped twice and never closed; the output reads 1orW(x)=-1",
    "x250": "labelled 1 although 1 + 1/e is not 1 - 1/e",
    "x348": "the gold is 'C. x = 42' (NeMo-Skills' reversed pair): not an answer to compare 'C' with",
}
"""Disagreements where the source's label rests on an option or an input one can argue with."""

GRADER_ERRORS: dict[str, str] = {
    "x058": "the answer after a broken box is a marker's quoted '$12 $ and $13 $'; read as 12",
    "x191": "a list of pairs (5,2),(7,2) for the gold p=5,q=2;p=7,q=2: math-verify does not pair them",
    "x234": "two boxes separated by 'and y_2 =' (a digit in the gap): only the last box is read",
    "x396": "the number inside a French sentence after 'Réponse:' (220 ... 12 mois): several numbers",
    "x408": "the gold p = 5, q = 2 \\quad \\text{and} \\quad p = 7, q = 2 against p=5,q=2;p=7,q=2",
}
"""Disagreements where the shipped grader is wrong (known limits)."""
