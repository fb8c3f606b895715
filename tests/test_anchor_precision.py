"""``fp32_anchor_passes``: under bf16, the whole-completion log-prob passes of an off-policy group objective run in
fp32 (autocast off, fp32 master weights) and generation stays in bf16; the settings that make no sense say so."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, count_a_reward, prompt_dataset

from apo.integrations.trl.precision import fp32_forward, resolve_fp32_anchor_passes


def _record_forwards(model: torch.nn.Module) -> list[tuple[str, torch.dtype, bool, int]]:
    """Hooks on ``model``: for every call of the first plain ``nn.Linear`` of the decoder body (a query projection,
    the base layer under LoRA), ``(kind, output dtype, grad enabled, sequence length)``; ``kind`` is ``"generate"``
    when the causal LM's forward got a KV cache or ``use_cache`` (prefill and decode steps), ``"score"`` otherwise (a
    whole-completion pass: pi_old's log-probs at the rollout, the policy's in the loss)."""
    records: list[tuple[str, torch.dtype, bool, int]] = []
    state = {"kind": None}
    lm = next(
        m for m in model.modules() if type(m).__name__.endswith("ForCausalLM") and "transformers" in type(m).__module__
    )  # the transformers model, not PEFT's wrapper (whose generate calls the model's own)
    linear = next(m for n, m in model.named_modules() if type(m) is torch.nn.Linear and "q_proj" in n)

    def before_lm(module, args, kwargs):
        cached = any(kwargs.get(k) is not None for k in ("cache", "past_key_values")) or kwargs.get("use_cache")
        state["kind"] = "generate" if cached else "score"

    def after_linear(module, inputs, output):
        records.append((state["kind"], output.dtype, torch.is_grad_enabled(), output.shape[1]))

    lm.register_forward_pre_hook(before_lm, with_kwargs=True)
    linear.register_forward_hook(after_linear)
    return records


def _bf16_offpolicy_trainer(tokenizer, tmp_path, peft: bool = False, **overrides):
    from conftest import FAST_DEFAULTS

    from apo import APOConfig, APOTrainer

    kwargs = {
        **FAST_DEFAULTS,
        "output_dir": str(tmp_path / "out"),
        "bf16": True,
        "updates_per_rollout": 2,
        "max_steps": 2,
        **overrides,
    }
    extra = {}
    if peft:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    return APOTrainer(
        model=build_tiny_llama(tokenizer, init_std=0.5),
        reward_funcs=count_a_reward,
        args=APOConfig(**kwargs),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        **extra,
    )


@pytest.mark.parametrize("variant", ["full", "lora", "activation-checkpointing"])
def test_offpolicy_bf16_run_scores_in_fp32_and_decodes_in_bf16(tokenizer, tmp_path, variant):
    if variant == "lora":
        pytest.importorskip("peft")
    overrides = {"gradient_checkpointing": True} if variant == "activation-checkpointing" else {}
    trainer = _bf16_offpolicy_trainer(tokenizer, tmp_path, peft=variant == "lora", **overrides)
    assert trainer.fp32_anchor_passes is True  # the default: apo, bf16, 2 optimizer steps per rollout
    records = _record_forwards(trainer.model)
    trainer.train()
    generate = [r for r in records if r[0] == "generate"]
    score = [r for r in records if r[0] == "score"]
    assert any(length == 1 for _, _, _, length in generate)  # decode steps were seen
    # PEFT's generate calls the transformers model's own forward, not the PEFT model's that accelerate wrapped in
    # autocast: with LoRA, generation is fp32 whatever this setting says (docs/numerics.md)
    assert {dtype for _, dtype, _, _ in generate} == {torch.float32 if variant == "lora" else torch.bfloat16}
    assert {dtype for _, dtype, _, _ in score} == {torch.float32}
    assert any(grad for _, _, grad, _ in score)  # the loss pass
    assert any(not grad for _, _, grad, _ in score)  # pi_old's pass at the rollout
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # master weights stay fp32
    assert max(h["apo/u_abs_max"] for h in trainer.state.log_history if "apo/u_abs_max" in h) > 0  # off the anchor


def test_fp32_anchor_passes_false_keeps_the_old_bf16_passes(tokenizer, tmp_path, caplog):
    caplog.set_level("WARNING", logger="apo")
    trainer = _bf16_offpolicy_trainer(tokenizer, tmp_path, fp32_anchor_passes=False, max_steps=1)
    assert trainer.fp32_anchor_passes is False
    lines = [r.getMessage() for r in caplog.records if "the anchor u is mostly bf16 rounding" in r.getMessage()]
    assert len(lines) == 1 and "fp32_anchor_passes=false" in lines[0]
    records = _record_forwards(trainer.model)
    trainer.train()
    assert {dtype for kind, dtype, _, _ in records if kind == "score"} == {torch.bfloat16}


def test_on_policy_and_fp32_runs_keep_their_passes(make_trainer):
    assert make_trainer(bf16=True).fp32_anchor_passes is False  # one step per rollout: u = 0 exactly
    assert make_trainer(updates_per_rollout=2).fp32_anchor_passes is False  # fp32 compute
    assert make_trainer(algorithm="grpo", bf16=True, updates_per_rollout=2).fp32_anchor_passes is False


def test_fp32_forward_undoes_accelerates_autocast_wrapper_and_restores_it(tokenizer):
    """On a model prepared by accelerate with bf16 mixed precision (its forward wrapped in ``torch.autocast``), the
    block's forward is the fp32 forward, to the bit, and the wrapper is back after the block (also after an error)."""
    from accelerate import Accelerator

    model = build_tiny_llama(tokenizer, init_std=0.5)
    ids = torch.randint(0, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    prepared = accelerator.prepare_model(model)
    with torch.no_grad():
        wrapped = prepared(input_ids=ids).logits  # accelerate returns fp32 outputs of a bf16 forward
        with fp32_forward(prepared, accelerator), accelerator.autocast():  # TRL's pass enters accelerator.autocast()
            exact = prepared(input_ids=ids).logits
        with pytest.raises(RuntimeError), fp32_forward(prepared, accelerator):
            raise RuntimeError("inside")
        again = prepared(input_ids=ids).logits
        with accelerator.autocast():
            assert torch.is_autocast_enabled("cpu")  # the handler is back
    assert torch.equal(exact, reference)
    assert not torch.equal(wrapped, reference)  # bf16 matmuls differ from fp32 ones
    assert torch.equal(again, wrapped)  # the autocast wrapper is back


def test_bad_fp32_anchor_passes_settings_name_the_key(tokenizer):
    from conftest import FAST_DEFAULTS

    from apo import APOConfig

    base = {**FAST_DEFAULTS, "output_dir": "/tmp/unused", "updates_per_rollout": 2}
    with pytest.raises(ValueError, match=r"fp32_anchor_passes=true without bf16/fp16"):
        APOConfig(**{**base, "fp32_anchor_passes": True})
    with pytest.raises(ValueError, match=r"fp32_anchor_passes=true applies to the group objectives.*'grpo'"):
        APOConfig(**{**base, "algorithm": "grpo", "bf16": True, "fp32_anchor_passes": True})
    # bf16 weights without a master copy: the passes cannot be fp32
    with pytest.raises(ValueError, match=r"fp32_anchor_passes=true needs fp32 weights.*bfloat16"):
        resolve_fp32_anchor_passes(True, "group", {torch.bfloat16}, True, 2)
    on, note = resolve_fp32_anchor_passes(None, "group", {torch.bfloat16}, True, 2)
    assert on is False and "cannot be fp32" in note
    on, note = resolve_fp32_anchor_passes(False, "group", {torch.float32}, True, 1)
    assert on is False and "changes nothing here (one optimizer step per rollout" in note
    on, note = resolve_fp32_anchor_passes(False, "group", {torch.float32}, False, 4)
    assert on is False and "changes nothing here (compute is fp32)" in note
    assert resolve_fp32_anchor_passes(None, "group", {torch.float32}, True, 4) == (True, None)


def test_lora_on_tied_embeddings_turns_the_default_fp32_head_off_and_refuses_an_explicit_one(tokenizer, tmp_path):
    """TRL 1.16 cannot cast the tied LM head of a LoRA model (it raised AttributeError: ``apo train use_peft=true
    bf16=true`` failed on the tiny model): the default turns off with a note, an explicit ``true`` names the key."""
    pytest.importorskip("peft")
    assert _bf16_offpolicy_trainer(tokenizer, tmp_path, peft=True).args.cast_lm_head_to_fp32 is False
    with pytest.raises(ValueError, match=r"set cast_lm_head_to_fp32=false"):
        _bf16_offpolicy_trainer(tokenizer, tmp_path, peft=True, cast_lm_head_to_fp32=True)
