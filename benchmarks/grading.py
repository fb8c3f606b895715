"""Grading benchmark: speed of ``math_reward`` on a training-sized batch, and its accuracy on the labelled corpus.

    PYTHONPATH=src python benchmarks/grading.py            # speed: 1,024 completions of 1,000 characters, one core
    PYTHONPATH=src python benchmarks/grading.py --corpus   # precision / recall / agreement on tests/data
    PYTHONPATH=src python benchmarks/grading.py --external # the same on the external corpus, and math-verify alone

Speed: 128 prompts x 8 completions (a GRPO batch), each about 1,000 characters of reasoning that ends in a boxed or
stated answer (equivalent forms of the gold answer, wrong answers, no answer, truncated thinking), gold answers drawn
from the MATH answer forms of the corpus. The process and its grader process are pinned to one core
(``sched_setaffinity``); the grader process is started (and math-verify warmed up) before timing, as it is once per
training run. Reported: the best and median of ``--repeats`` calls, each on a freshly drawn batch.

Corpus: the shipped grader (``math_reward``, each case's ``answer_format``, default ``auto``) and math-verify alone
(``parse`` of the raw completion with its default extraction, ``verify`` against ``\\boxed{gold}``; run in the same
killable grader machinery, 5 s per case) against the hand labels; a positive is a score of 1.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

FILLER = [
    "First, we rewrite the expression so that the common factor is visible. ",
    "Let $x = 3$ and $y = 4$; then $x^2 + y^2 = 25$, so the hypotenuse is 5. ",
    "Substituting back, we find that $2a - 7 = 11$, hence $a = 9$. ",
    "The number of ways is $\\binom{6}{2} = 15$, and each way is equally likely. ",
    "We check the boundary cases $n = 0$ and $n = 1$ separately. ",
    "Multiplying both sides by $\\frac{3}{2}$ gives the next line. ",
    "Since the discriminant $b^2 - 4ac = 16 - 12 = 4 > 0$, there are two real roots. ",
    "Adding the 12 apples to the 30 oranges gives 42 pieces of fruit. ",
]


def _completion(rng: random.Random, answer: str | None, style: str) -> str:
    body = ""
    while len(body) < 900:
        body += rng.choice(FILLER)
    if style == "truncated":
        return "<think>\n" + body
    if answer is None:
        return body
    if style == "box":
        return body + f"\nTherefore the answer is $\\boxed{{{answer}}}$."
    if style == "think":
        return "<think>\n" + body[:600] + "\n</think>\n" + body[600:] + f" So the result is \\boxed{{{answer}}}."
    return body + f"\nThe final answer is ${answer}$."


def make_batch(seed: int, n_prompts: int = 128, group: int = 8) -> tuple[list[str], list[str]]:
    """``(completions, golds)``: ``n_prompts * group`` completions of about 1,000 characters."""
    from data.grading_corpus import FAMILIES

    rng = random.Random(seed)
    families = list(FAMILIES.values())
    completions, golds = [], []
    for _ in range(n_prompts):
        gold, answers = rng.choice(families)
        for _ in range(group):
            style = rng.choice(["box", "box", "think", "final", "truncated", "none"])
            answer = None if style == "none" else rng.choice(answers)[0]
            completions.append(_completion(rng, answer, style))
            golds.append(gold)
    return completions, golds


def bench_speed(repeats: int) -> None:
    from apo.tasks.rewards import math_reward

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    math_reward(["\\boxed{1+x^2}"], answer=["x^2+1"])  # start the grader process
    times = []
    for r in range(repeats):
        completions, golds = make_batch(seed=r)
        t0 = time.perf_counter()
        scores = math_reward(completions, answer=golds)
        times.append(time.perf_counter() - t0)
    n = len(completions)
    chars = sum(map(len, completions)) / n
    print(
        f"math_reward: {n} completions of {chars:.0f} characters on one core: best {min(times):.2f} s, "
        f"median {statistics.median(times):.2f} s over {repeats} batches (mean score {sum(scores) / n:.2f})"
    )


def math_verify_alone(gold: str, completion) -> bool:
    """math-verify with its default extraction on the raw completion (the comparison baseline)."""
    import logging

    from math_verify import parse, verify

    from apo.tasks.grading import completion_text

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    pred = parse(completion_text(completion), parsing_timeout=None)
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    return bool(pred and gold_parsed and verify(gold_parsed, pred, timeout_seconds=None))


def _metrics(labels: list[float], scores: list[float]) -> str:
    tp = sum(1 for y, s in zip(labels, scores, strict=True) if y == 1 and s == 1)
    fp = sum(1 for y, s in zip(labels, scores, strict=True) if y == 0 and s == 1)
    fn = sum(1 for y, s in zip(labels, scores, strict=True) if y == 1 and s != 1)
    agree = sum(1 for y, s in zip(labels, scores, strict=True) if y == s)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return (
        f"precision {precision:.3f} ({tp}/{tp + fp}), recall {recall:.3f} ({tp}/{tp + fn}), "
        f"agreement {agree / len(labels):.3f} ({agree}/{len(labels)})"
    )


def bench_corpus() -> None:
    from data.grading_corpus import cases

    from apo.tasks.bounded import bounded_map
    from apo.tasks.rewards import math_reward

    corpus = cases()
    labels = [c.expected for c in corpus]
    shipped, slowest = [], (0.0, "")
    math_reward(["\\boxed{1+x^2}"], answer=["x^2+1"])  # start the grader process, as the tests do
    for c in corpus:
        t0 = time.perf_counter()
        prompts = [c.prompt] if c.prompt else None
        shipped.append(math_reward([c.completion], answer=[c.gold], prompts=prompts, answer_format=c.answer_format)[0])
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, c.tag))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    results = bounded_map("grading:math_verify_alone", [(c.gold, c.completion) for c in corpus], 5.0)
    alone = [1.0 if ok and value else 0.0 for ok, value in results]
    n_timeouts = sum(1 for ok, value in results if not ok)
    print(f"corpus: {len(corpus)} cases, {sum(labels):.0f} labelled 1")
    print(f"shipped grader (math_reward): {_metrics(labels, shipped)}; slowest case {slowest[0]:.2f} s ({slowest[1]})")
    print(f"math-verify alone:            {_metrics(labels, alone)}; {n_timeouts} cases ran over 5 s or failed")
    by_tag = collections.Counter(c.tag.split("/")[0] for c, a in zip(corpus, alone, strict=True) if a != c.expected)
    print(f"math-verify alone, mismatches by tag: {dict(by_tag.most_common())}")
    for c, s in zip(corpus, shipped, strict=True):
        if s != c.expected:
            print(
                f"  shipped mismatch [{c.tag}] {str(c.completion)[:70]!r} gold {c.gold!r}: label {c.expected}, got {s}"
            )


def math_verify_pair(gold: str, output: str) -> bool:
    """math-verify as the sources' tests call it: ``verify(parse(gold), parse(output))``, default extraction."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed, pred = parse(gold, parsing_timeout=None), parse(output, parsing_timeout=None)
    return bool(pred and gold_parsed and verify(gold_parsed, pred, timeout_seconds=None))


def bench_external() -> None:
    from data.external_grading_corpus import cases
    from test_external_grading_corpus import grade_all, report

    from apo.tasks.bounded import bounded_map

    corpus = cases()
    t0 = time.perf_counter()
    scores = grade_all(corpus)
    elapsed = time.perf_counter() - t0
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    results = bounded_map("grading:math_verify_pair", [(c.gold, c.output) for c in corpus], 5.0)
    alone = {c.id: 1.0 if ok and value else 0.0 for c, (ok, value) in zip(corpus, results, strict=True)}
    print(f"external corpus: {len(corpus)} cases, {sum(c.label for c in corpus)} labelled 1 ({elapsed:.1f} s)")
    for name, table in (("shipped grader (math_reward)", scores), ("math-verify alone", alone)):
        s = report(corpus, table)["all"]
        print(
            f"{name:30s} agreement {s['agreement']:.3f}, precision {s['precision']:.3f}, recall {s['recall']:.3f} "
            f"({s['fp']} false positives, {s['fn']} false negatives)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="store_true", help="accuracy on the labelled corpus instead of speed")
    parser.add_argument("--external", action="store_true", help="accuracy on the external corpus instead of speed")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (speed)")
    args = parser.parse_args()
    if args.external:
        bench_external()
    else:
        bench_corpus() if args.corpus else bench_speed(args.repeats)


if __name__ == "__main__":
    main()
