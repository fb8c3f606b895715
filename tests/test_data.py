"""Task data: disjoint train / held-out splits (single files, generated tasks), named evaluation data, rows without
a gold answer, and chat-prompt rendering with Qwen3's thinking switch. CPU, offline."""

from __future__ import annotations

import json
import logging
import string

import pytest
from conftest import FAST_DEFAULTS, build_tiny_llama

from apo.tasks.datasets import load_task, render_prompts


def _write_math(path, n=40, *, duplicate=0, blank=()):
    rows = [{"problem": f"What is {i} + {i}?", "solution": f"So $\\boxed{{{2 * i}}}$."} for i in range(n)]
    rows += [dict(rows[0]) for _ in range(duplicate)]  # the same problem again, at the end of the file
    for i in blank:
        rows[i]["solution"] = "no boxed answer here" if i % 2 else ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Held-out splits


def test_single_file_is_split_into_disjoint_parts(tmp_path, caplog):
    path = _write_math(tmp_path / "math.jsonl", 40)
    with caplog.at_level(logging.INFO, logger="apo.tasks.datasets"):
        train = load_task(str(path), "train", seed=0)
        held_out = load_task(str(path), "eval", seed=1234)  # the CLI draws evaluation with another seed
    assert (len(train), len(held_out)) == (36, 4)  # eval_fraction 0.1 of 40 distinct problems
    assert not set(train["problem"]) & set(held_out["problem"])
    assert set(train["problem"]) | set(held_out["problem"]) == {f"What is {i} + {i}?" for i in range(40)}
    assert "40 distinct problems split into 36 train / 4 held out" in caplog.text
    # The split depends on split_seed only: other draw seeds and sizes take from the same two parts.
    assert set(load_task(str(path), "eval", seed=7)["problem"]) == set(held_out["problem"])
    assert set(load_task(str(path), "train", n=10, seed=3)["problem"]) <= set(train["problem"])
    other = load_task(str(path), "eval", seed=0, split_seed=1, eval_fraction=0.25)
    assert len(other) == 10 and set(other["problem"]) != set(held_out["problem"])
    # Used whole only when asked (a file named as evaluation data).
    assert len(load_task(str(path), "eval", whole_file=True)) == 40


def test_repeated_problems_stay_on_one_side(tmp_path):
    path = _write_math(tmp_path / "dup.jsonl", 10, duplicate=5)
    train, held_out = load_task(str(path), "train"), load_task(str(path), "eval")
    assert len(train) + len(held_out) == 15
    assert not set(train["problem"]) & set(held_out["problem"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"eval_fraction": 0}, "eval_fraction"),
        ({"split_seed": "a"}, "split_seed"),
        ({"eval_frac": 0.2}, "eval_fraction"),  # unknown option: the message lists the valid ones
    ],
)
def test_split_options_are_checked(tmp_path, options, message):
    path = _write_math(tmp_path / "math.jsonl", 10)
    with pytest.raises(ValueError, match=message):
        load_task(str(path), "eval", **options)


def test_single_problem_file_cannot_be_split(tmp_path):
    path = _write_math(tmp_path / "one.jsonl", 1)
    with pytest.raises(ValueError, match="eval_task"):
        load_task(str(path), "train")
    assert len(load_task(str(path), "train", whole_file=True)) == 1


def test_generated_tasks_keep_train_and_eval_disjoint_across_seeds():
    # The CLI draws training prompts with `seed` and evaluation prompts with `eval_seed`.
    arith_train = load_task("arith:+*", "train", n=500, seed=0, digits=1)
    arith_eval = load_task("arith:+*", "eval", seed=1234, digits=1)
    assert len(arith_eval) > 0 and not set(arith_train["prompt"]) & set(arith_eval["prompt"])
    rg_train = load_task("reasoning-gym:chain_sum", "train", n=300, seed=0)
    rg_eval = load_task("reasoning-gym:chain_sum", "eval", n=100, seed=1234)
    assert not set(rg_train["question"]) & set(rg_eval["question"])


# ---------------------------------------------------------------------------------------------------------------------
# Rows without a gold answer


def test_rows_without_gold_answer_are_named(tmp_path):
    path = _write_math(tmp_path / "gaps.jsonl", 12, blank=(3, 8))
    with pytest.raises(ValueError) as err:
        load_task(str(path), "train")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "row 4, 9" in message and "2 of 12" in message


def test_gsm8k_style_rows_without_answer_are_named(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": f"q{i}", "answer": f"work #### {i}"} for i in range(6)]
    rows[2]["answer"] = "work #### "
    rows[5]["answer"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"row 3, 6 \(1-based"):
        load_task(str(path), "train")


def test_missing_gold_answer_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import apo.cli.inputs as inputs
    from apo.cli.main import main

    path = _write_math(tmp_path / "gaps.jsonl", 12, blank=(5,))

    def no_model(cfg):
        raise AssertionError("the model was loaded before the data were checked")

    monkeypatch.setattr(inputs, "load_policy", no_model)
    assert main(["train", f"task={path}", "reward=math", f"output_dir={tmp_path / 'run'}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("apo: error")]
    assert len(errors) == 1 and str(path) in errors[0] and "row 6 " in errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# Thinking mode: a Qwen3-style chat template, rendered as TRL renders it

QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
"""Qwen3's switch, reduced to its effect on the generation prompt: ``enable_thinking=False`` opens the assistant turn
with an empty thinking block, so the model answers directly."""


@pytest.fixture
def qwen3_style_tokenizer():
    from apo.tasks.tiny import char_tokenizer

    tok = char_tokenizer(string.printable[:95], padding_side="left")
    tok.chat_template = QWEN3_STYLE_TEMPLATE
    return tok


def test_render_prompts_honours_enable_thinking(qwen3_style_tokenizer):
    tok = qwen3_style_tokenizer
    prompts = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "1+1?"}]]
    off, special = render_prompts(tok, prompts, {"enable_thinking": False})
    on, _ = render_prompts(tok, prompts, {"enable_thinking": True})
    default, _ = render_prompts(tok, prompts)
    assert special is False
    assert off[0] == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert on[0] == default[0] == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompts(tok, ["37+58="], {"enable_thinking": False}) == (["37+58="], True)  # plain: untouched


@pytest.mark.parametrize("thinking", [False, True])
def test_evaluation_prompts_match_the_trainers(qwen3_style_tokenizer, tmp_path, thinking):
    """`apo eval` tokenizes what APOTrainer (TRL's _tokenize_prompts) generates from, with the same kwargs."""
    from apo import APOConfig, APOTrainer

    tok = qwen3_style_tokenizer
    ds = load_task("arith", "eval", n=3, tokenizer=tok)
    args = APOConfig(
        **{**FAST_DEFAULTS, "output_dir": str(tmp_path), "chat_template_kwargs": {"enable_thinking": thinking}}
    )
    trainer = APOTrainer(
        model=build_tiny_llama(tok),
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=ds,
        processing_class=tok,
    )
    prompts = [row["prompt"] for row in ds]  # a list, as TRL gets them from its batch
    trl_ids = trainer._tokenize_prompts(prompts)[0]
    texts, special = render_prompts(tok, prompts, {"enable_thinking": thinking})
    ours = tok(texts, add_special_tokens=special)["input_ids"]
    assert [list(x) for x in trl_ids] == ours
    assert all(t.endswith("<think>\n\n</think>\n\n") != thinking for t in texts)


# ---------------------------------------------------------------------------------------------------------------------
# The CLI: held-out evaluation, named evaluation data, thinking mode in the paper config


def test_eval_uses_the_held_out_part_or_the_named_file(tmp_path, capsys, caplog):
    from apo.cli.main import main

    train_file = _write_math(tmp_path / "train.jsonl", 40)
    eval_file = tmp_path / "named.jsonl"
    eval_file.write_text(
        "".join(json.dumps({"problem": f"{i} * 3?", "solution": f"\\boxed{{{3 * i}}}"}) + "\n" for i in range(7))
    )
    common = ["reward=math", "eval_samples=1", "max_completion_length=4", "torch_threads=1"]
    with caplog.at_level(logging.INFO):
        assert main(["eval", f"task={train_file}", *common]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 4  # the held-out part: 0.1 of 40
    assert "evaluation data: 4 prompts" in caplog.text and "held-out part of task" in caplog.text
    assert main(["eval", f"task={train_file}", f"eval_task={eval_file}", *common]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 7  # named evaluation data: used whole
    assert main(["eval", f"task={train_file}", f"eval_task={train_file}", *common]) == 2
    assert "eval_task" in capsys.readouterr().err


def test_paper_config_states_the_thinking_mode(capsys):
    import yaml

    from apo.cli.config import read_yaml
    from apo.cli.main import main

    assert read_yaml("paper-qwen3-1.7b-math-l3")["chat_template_kwargs"] == {"enable_thinking": False}
    assert main(["config", "paper-qwen3-1.7b-math-l3"]) == 0
    shown = yaml.safe_load("\n".join(ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")))
    assert shown["chat_template_kwargs"] == {"enable_thinking": False} and shown["truncated_completions"] == "zero"
