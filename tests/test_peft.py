"""LoRA adapters (``use_peft``): every algorithm trains an adapter; pi_old is the adapter-on policy at the rollout and
the reference model of ``beta > 0`` the adapter-off base; ``apo train`` end to end (checkpoints, SIGKILL and
``--resume``, ``final/``, ``apo eval --policy``, ``apo merge``); the bad inputs, each one line naming the key."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_DEFAULTS, build_tiny_llama, count_a_reward, prompt_dataset

pytest.importorskip("peft")

from peft import LoraConfig, PeftModel  # noqa: E402

from apo.cli.main import main  # noqa: E402

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
CLI = ["use_peft=true", "eval_size=4", "eval_samples=2", "per_device_train_batch_size=16", "torch_threads=1"]
TIME_KEYS = {"time", "wall_time_s", "step_time"}


def lora_trainer(tokenizer, tmp_path, trainer_cls=None, **overrides):
    from apo import APOConfig, APOTrainer

    args = APOConfig(**{**FAST_DEFAULTS, "output_dir": str(tmp_path / "out"), **overrides})
    return (trainer_cls or APOTrainer)(
        model=build_tiny_llama(tokenizer),
        reward_funcs=count_a_reward,
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )


def logps(trainer, batch, adapter: bool) -> torch.Tensor:
    """Per-token log-probs of the batch's completions under the adapter-on policy or the adapter-off base."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    model = trainer.model
    with torch.no_grad(), contextlib.nullcontext() if adapter else model.disable_adapter():
        out, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, batch["completion_ids"].size(1))
    return out.detach()


@pytest.mark.parametrize("algorithm", ["apo", "adpo", "grpo", "gspo"])
def test_lora_trains_only_the_adapter_for_every_algorithm(tokenizer, tmp_path, algorithm):
    trainer = lora_trainer(tokenizer, tmp_path, algorithm=algorithm)
    assert isinstance(trainer.model, PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all("lora_" in n for n in moved), sorted(moved)[:5]  # base weights untouched
    assert any("lora_B" in n for n in moved)  # B starts at 0: the adapter now changes the policy


class Recorder:
    """Wraps a trainer's rollout: each rollout's batch with the adapter-on and adapter-off log-probs at that moment."""

    def __init__(self, trainer):
        self.rollouts = []
        inner = trainer._generate_and_score_completions

        def record(inputs):
            out = inner(inputs)
            self.rollouts.append((out, logps(trainer, out, True), logps(trainer, out, False)))
            return out

        trainer._generate_and_score_completions = record


def test_anchor_is_the_adapter_on_policy_at_the_rollout(tokenizer, tmp_path):
    # Two optimizer steps per rollout (steps_per_generation=2): TRL computes pi_old at the rollout; u = 0 on the
    # rollout's first step, != 0 on its second. Two rollouts, so the adapter has moved by the second.
    trainer = lora_trainer(tokenizer, tmp_path, steps_per_generation=2, max_steps=4, learning_rate=5e-2)
    rec = Recorder(trainer)
    trainer.train()
    assert len(rec.rollouts) == 2
    for out, on, _off in rec.rollouts:
        torch.testing.assert_close(out["old_per_token_logps"], on, rtol=0, atol=1e-5)
    _, on, off = rec.rollouts[1]
    mask = rec.rollouts[1][0]["completion_mask"].bool()
    assert (on - off)[mask].abs().max() > 1e-3  # the adapter-off base would have been another anchor
    u = [h["apo/u_abs_max"] for h in trainer.state.log_history if "apo/u_abs_max" in h]
    assert u[0] == 0.0 and u[2] == 0.0 and u[1] > 0 and u[3] > 0, u


def test_lora_on_policy_anchor_gives_u_zero(tokenizer, tmp_path):
    trainer = lora_trainer(tokenizer, tmp_path, max_steps=2, learning_rate=5e-2)
    trainer.train()
    u = [h["apo/u_abs_max"] for h in trainer.state.log_history if "apo/u_abs_max" in h]
    assert u == [0.0, 0.0]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_lora_dropout_moves_the_anchor_without_a_weight_change(tokenizer, tmp_path, dropout):
    # Why lora_dropout defaults to 0: with learning_rate=0 the weights never move, yet with dropout pi_old (at the
    # rollout) and the loss's log-probs use different masks, so u != 0 (a non-zero adapter: init_lora_weights=False).
    from apo import APOConfig, APOTrainer

    args = APOConfig(
        **{**FAST_DEFAULTS, "output_dir": str(tmp_path / "out"), "steps_per_generation": 2, "learning_rate": 0.0}
    )
    lora = LoraConfig(**{**LORA, "lora_dropout": dropout}, init_lora_weights=False)
    trainer = APOTrainer(
        model=build_tiny_llama(tokenizer),
        reward_funcs=count_a_reward,
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    u = [h["apo/u_abs_max"] for h in trainer.state.log_history if "apo/u_abs_max" in h]
    assert len(u) == 2 and (all(x == 0.0 for x in u) if dropout == 0 else all(x > 0.05 for x in u)), u


def test_reference_model_is_the_adapter_off_base(tokenizer, tmp_path):
    trainer = lora_trainer(tokenizer, tmp_path, algorithm="grpo", beta=0.1, max_steps=2, learning_rate=5e-2)
    assert trainer.ref_model is None  # no second copy: the reference is the base with the adapter disabled
    rec = Recorder(trainer)
    trainer.train()
    out, on, off = rec.rollouts[1]
    torch.testing.assert_close(out["ref_per_token_logps"], off, rtol=0, atol=1e-5)
    mask = out["completion_mask"].bool()
    assert (on - off)[mask].abs().max() > 1e-3
    # ... and the base is the model as built: a fresh copy of it gives the same log-probs.
    fresh = build_tiny_llama(tokenizer).eval()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask_all = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    T = out["completion_ids"].size(1)
    with torch.no_grad():
        logits = fresh(input_ids=ids, attention_mask=mask_all).logits[:, -T - 1 : -1] / trainer.args.temperature
    base = logits.log_softmax(-1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(base[mask], off[mask], rtol=0, atol=1e-5)


def test_fast_generation_with_an_adapter_gives_the_stock_tokens(tokenizer, tmp_path):
    # The compiled static-cache decode (an eager backend, so it runs on CPU) through the PeftModel, against TRL's
    # own generate, greedy, before and after the adapter moves.
    from test_generation import CountingEager, _compiled_everywhere, _fast, _prompt_ids, _stock

    from apo.integrations.trl.generation import FastGeneration

    trainer = lora_trainer(
        tokenizer,
        tmp_path,
        fast_generation=True,
        generation_kwargs={"do_sample": False, "min_new_tokens": FAST_DEFAULTS["max_completion_length"]},
    )
    backend = CountingEager()
    trainer._fast_generation = FastGeneration(bucket=16, compile_config=_compiled_everywhere(backend.backend))
    ids = _prompt_ids(tokenizer)
    before = _fast(trainer, ids)
    assert backend.compiles >= 1 and before == _stock(trainer, ids)
    with torch.no_grad():  # move the adapter: B = 0 at the start, so the policy is the base model until then
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    after = _fast(trainer, ids)
    assert after != before and after == _stock(trainer, ids)
    assert trainer._fast_generation.disabled is None and trainer._fast_generation.fallbacks == 0


# ----------------------------------------------------------------------------------------------------------------
# apo train / eval / merge end to end.


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIME_KEYS} for x in lines]


def test_cli_lora_run_kill_resume_final_eval_and_merge(tmp_path, capsys):
    from fault_zygote import Zygote

    args = [*CLI, "max_steps=2", "save_steps=1"]
    ref = tmp_path / "ref"
    assert main(["train", f"output_dir={ref}", *args]) == 0
    saved = (ref / "config.yaml").read_text()
    for line in (
        "use_peft: true",
        "lora_r: 16",
        "lora_alpha: 32",
        "lora_dropout: 0.0",
        "lora_target_modules: all-linear",
    ):
        assert line in saved, saved
    ckpt = ref / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    final = ref / "final"
    assert (final / "adapter_config.json").is_file() and (final / "tokenizer.json").is_file()

    # SIGKILL after the first checkpoint, then --resume: the same steps and the same trained policy.
    run = tmp_path / "run"
    zyg = Zygote()
    try:
        pid = zyg.start(["train", f"output_dir={run}", *args], tmp_path / "kill.log")
        deadline = time.time() + 120
        while not (run / "checkpoint-1" / "apo_manifest.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        zyg.wait(pid)
        assert not (run / "summary.json").exists()
        pid = zyg.start(["train", f"output_dir={run}", *args, "--resume"], tmp_path / "resume.log")
        assert zyg.wait(pid) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        zyg.close()
    assert rows(run) == rows(ref)
    after = json.loads((ref / "eval_after.json").read_text())
    assert json.loads((run / "eval_after.json").read_text()) == after

    # apo eval of final/ (base + adapter) gives what the trainer's own policy gave, prompt by prompt.
    out = tmp_path / "eval.json"
    assert main(["eval", str(ref / "config.yaml"), "--policy", str(final), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["prompt_rewards"] == after["prompt_rewards"]

    # apo merge: a full model folder whose logits are those of base + adapter.
    merged = tmp_path / "merged"
    assert main(["merge", str(final), str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    from transformers import AutoModelForCausalLM

    from apo.cli.lora import load_adapter_model

    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        a = load_adapter_model(final, torch.float32).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert (a - a.mean()).abs().max() > 0 and torch.allclose(a, b, atol=1e-5)

    # Resuming the LoRA run as a full one: one line naming use_peft, before any weights load.
    capsys.readouterr()
    full = [a for a in args if a != "use_peft=true"]
    assert main(["train", f"output_dir={run}", *full, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'use_peft'" in err and "LoRA" in err, err


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["lora_r=8"], "'lora_r'"),
        (["use_dora=true"], "'use_dora'"),
        (["use_peft=true", "lora_target_modules=[q_proj,qkv_proj]"], "'lora_target_modules'"),
        (["use_peft=true", "lora_target_modules=attn\\.nothing"], "'lora_target_modules'"),
        (["use_peft=true", "lora_modules_to_save=[score]"], "'lora_modules_to_save'"),
        (["use_peft=true", "lora_r=0"], "'lora_r'"),
        (["use_peft=true", "lora_dropout=1.0"], "'lora_dropout'"),
    ],
)
def test_bad_lora_settings_are_one_line_naming_the_key(tmp_path, capsys, monkeypatch, overrides, key):
    from apo.cli import inputs as inputslib

    loads = []
    monkeypatch.setattr(inputslib, "load_policy", lambda cfg: loads.append(cfg) or pytest.fail("weights loaded"))
    assert main(["train", f"output_dir={tmp_path / 'r'}", *CLI[1:], *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apo: error:") and "\n" not in err and key in err, err
    assert not loads and not (tmp_path / "r").exists()


def test_use_peft_without_peft_installed(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    assert main(["train", f"output_dir={tmp_path / 'r'}", *CLI]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'use_peft'" in err and "pip install" in err, err


def test_full_run_resumed_as_lora_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: tiny-arith\nuse_cpu: true\nbf16: false\n")
    assert main(["train", str(run / "config.yaml"), f"output_dir={run}", "use_peft=true", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'use_peft'" in err and "every weight" in err, err
