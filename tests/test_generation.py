"""The fast generation path (:mod:`apo.integrations.trl.generation`) on CPU.

On CPU the trainer's default is TRL's path (compiled decoding targets CUDA), so these tests drive the fast path through
``trainer._fast_generation`` explicitly: a static cache uncompiled (``compile=False``), and a static cache compiled by
dynamo with a counting ``eager`` backend (``_compile_all_devices=True``), which exercises the same machinery as
inductor on a GPU — graph capture, guards, recompiles — in about a second. Greedy decoding (``do_sample=False``) makes
completions a function of the weights alone, so "same tokens" is an exact test; with sampling, the same seed gives the
same tokens too (the fast path draws from the random stream exactly as TRL's does).
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import FAST_DEFAULTS, build_tiny_llama, count_a_reward, prompt_dataset
from transformers import CompileConfig, GenerationConfig

from apo import APOConfig, APOTrainer
from apo.integrations.trl.generation import (
    FastGeneration,
    _checkpointing_enable,
    _checkpointing_on,
    _require_grads_hooks,
    fast_generation_config,
    padded_prompt_length,
    round_up,
    static_cache_length,
)

PROMPTS = ["1+2=", "33+4=", "5*6=", "7=", "88*9+1=", "2-2="]


# ---------------------------------------------------------------------------------------------------------------------
# Bucketing, as pure functions.


def test_round_up_on_cpu():
    assert [round_up(n, 64) for n in (0, 1, 63, 64, 65, 128, 129)] == [0, 64, 64, 64, 128, 128, 192]
    assert round_up(7, 1) == 7
    with pytest.raises(ValueError, match="multiple"):
        round_up(3, 0)


def test_padded_prompt_length_matches_trl_padding_on_cpu():
    prompts = [[1] * 5, [1] * 17, [1] * 9]
    assert padded_prompt_length(prompts) == 17  # the longest prompt: TRL left-pads to it
    assert padded_prompt_length(prompts, 8) == 24  # pad_to_multiple_of=8: 17 -> 24
    with pytest.raises(ValueError, match="empty"):
        padded_prompt_length([])


def test_static_cache_length_buckets_on_cpu():
    # 256 new tokens: prompts of 40..64 tokens -> 296..320 -> 320; 65..128 -> 321..384 -> 384.
    assert {static_cache_length(p, 256, 64) for p in range(40, 65)} == {320}
    assert {static_cache_length(p, 256, 64) for p in range(65, 129)} == {384}
    # Always room for the prompt_length + max_new_tokens - 1 positions generate writes.
    for p in range(1, 200):
        assert static_cache_length(p, 7, 16) >= p + 7 - 1
    # A user's max_cache_len is a floor (rounded to the bucket): one shape for the whole run.
    assert static_cache_length(10, 8, 16, floor=100) == 112
    assert static_cache_length(200, 8, 16, floor=100) == 208
    with pytest.raises(ValueError, match="max_new_tokens"):
        static_cache_length(10, 0, 16)


def test_fast_generation_config_copies_and_leaves_trl_config_alone_on_cpu():
    base = GenerationConfig(max_new_tokens=256, do_sample=True, temperature=0.7, disable_compile=True)
    config = fast_generation_config(base, 70, bucket=64)
    assert (config.cache_implementation, config.max_cache_len, config.disable_compile) == ("static", 384, False)
    assert (config.temperature, config.do_sample, config.max_new_tokens) == (0.7, True, 256)
    assert (base.cache_implementation, base.max_cache_len, base.disable_compile) == (None, None, True)
    uncompiled = fast_generation_config(base, 70, bucket=64, compile=False)
    assert uncompiled.disable_compile and uncompiled.compile_config is None
    with pytest.raises(ValueError, match="cache_implementation"):
        fast_generation_config(GenerationConfig(max_new_tokens=4, cache_implementation="offloaded"), 8)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's generation, fast vs stock.


@pytest.fixture
def greedy_trainer(tokenizer, tmp_path):
    """An APOTrainer with fast_generation on, greedy decoding, peaked logits (so greedy tokens vary), no EOS stop."""
    args = APOConfig(
        **{**FAST_DEFAULTS, "output_dir": str(tmp_path / "out")},
        fast_generation=True,
        generation_kwargs={"do_sample": False, "min_new_tokens": FAST_DEFAULTS["max_completion_length"]},
    )
    return APOTrainer(
        model=build_tiny_llama(tokenizer, init_std=0.5),
        reward_funcs=count_a_reward,
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )


def _prompt_ids(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def _stock(trainer, prompt_ids):
    """TRL's own ``_generate_single_turn`` (GRPOTrainer's), bypassing the hook."""
    return super(APOTrainer, trainer)._generate_single_turn(prompt_ids, None, {}, 1)[0]


def _fast(trainer, prompt_ids):
    return trainer._generate_single_turn(prompt_ids, None, {}, 1)[0]


class CountingEager:
    """A ``torch.compile`` backend that runs the captured graph eagerly and counts compilations in ``compiles``.

    A function, not a callable object: transformers deep-copies the ``CompileConfig`` (a function survives that)."""

    def __init__(self):
        count = [0]

        def backend(gm, example_inputs):
            count[0] += 1
            return gm.forward

        self.backend, self._count = backend, count

    @property
    def compiles(self) -> int:
        return self._count[0]


def _compiled_everywhere(backend) -> CompileConfig:
    config = CompileConfig(backend=backend, mode=None)
    config._compile_all_devices = True  # transformers compiles decoding on CUDA/XPU only unless told otherwise
    return config


def test_cpu_default_is_trl_path_with_one_log_line_on_cpu(greedy_trainer, tokenizer, caplog):
    ids = _prompt_ids(tokenizer)
    with caplog.at_level(logging.WARNING, logger="apo.integrations.trl.generation"):
        first, second = _fast(greedy_trainer, ids), _fast(greedy_trainer, ids)
    assert first == second == _stock(greedy_trainer, ids)
    lines = [r.getMessage() for r in caplog.records if "fast_generation" in r.getMessage()]
    assert len(lines) == 1 and "on cpu" in lines[0], lines
    assert greedy_trainer._fast_generation.calls == 0


def test_static_cache_gives_stock_tokens_greedy_on_cpu(greedy_trainer, tokenizer):
    ids = _prompt_ids(tokenizer)
    greedy_trainer._fast_generation = FastGeneration(bucket=16, compile=False)
    stock, fast = _stock(greedy_trainer, ids), _fast(greedy_trainer, ids)
    assert fast == stock
    assert all(len(c) == FAST_DEFAULTS["max_completion_length"] for c in fast)
    assert len({tuple(c) for c in fast}) > 1  # not a degenerate all-equal output
    state = greedy_trainer._fast_generation
    assert state.calls == 1 and state.cache_lengths == {16}  # longest prompt 8 tokens (<bos> + 7) + 8 new -> 16


def test_static_cache_gives_stock_tokens_sampled_same_seed_on_cpu(greedy_trainer, tokenizer):
    ids = _prompt_ids(tokenizer)
    greedy_trainer.generation_config.do_sample = True
    greedy_trainer._fast_generation = FastGeneration(bucket=16, compile=False)
    torch.manual_seed(123)
    stock = _stock(greedy_trainer, ids)
    torch.manual_seed(123)
    fast = _fast(greedy_trainer, ids)
    torch.manual_seed(124)
    other = _fast(greedy_trainer, ids)
    assert fast == stock and other != stock


def test_compiled_decode_survives_mode_switch_checkpointing_and_weight_update_on_cpu(greedy_trainer, tokenizer):
    trainer, ids = greedy_trainer, _prompt_ids(tokenizer)
    model = trainer.model
    backend = CountingEager()
    trainer._fast_generation = FastGeneration(bucket=16, compile_config=_compiled_everywhere(backend.backend))
    _checkpointing_enable(model, None)
    model.train()

    before = _fast(trainer, ids)
    compiles = backend.compiles
    assert compiles >= 1 and before == _stock(trainer, ids)
    assert _checkpointing_on(model) and model.training  # restored by TRL's context around generate
    assert _fast(trainer, ids) == before and backend.compiles == compiles  # same shapes: no recompile

    model.eval()
    assert _fast(trainer, ids) == before  # eval mode: dropout is 0, same tokens (one more graph is allowed)
    model.train()
    compiles = backend.compiles
    assert _fast(trainer, ids) == before and backend.compiles == compiles  # back to the cached training graph

    # One optimizer step that moves the logits: push up the logit of a token that greedy decoding never picks.
    target = next(t for t in range(len(tokenizer)) if all(t not in c for c in before))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    x = torch.tensor([ids[0]])
    loss = -torch.log_softmax(model(input_ids=x).logits[0, -1], -1)[target]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()

    after = _fast(trainer, ids)
    assert after != before  # the compiled decode reads the updated weights ...
    assert after == _stock(trainer, ids)  # ... exactly as TRL's eager path does
    assert backend.compiles == compiles  # without recompiling: the parameters are graph inputs, not constants
    assert trainer._fast_generation.disabled is None and trainer._fast_generation.fallbacks == 0


def test_compile_failure_falls_back_once_and_restores_checkpointing_on_cpu(greedy_trainer, tokenizer, caplog):
    trainer, ids = greedy_trainer, _prompt_ids(tokenizer)

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    trainer._fast_generation = FastGeneration(bucket=16, compile_config=_compiled_everywhere(failing_backend))
    _checkpointing_enable(trainer.model, None)
    with caplog.at_level(logging.WARNING, logger="apo.integrations.trl.generation"):
        first = _fast(trainer, ids)
        second = _fast(trainer, ids)
    assert first == second == _stock(trainer, ids)
    assert _checkpointing_on(trainer.model)  # TRL's unwrap context left it off when generate raised
    state = trainer._fast_generation
    assert state.fallbacks == 1 and "no compiler here" in state.disabled
    lines = [r.getMessage() for r in caplog.records if "fast_generation" in r.getMessage()]
    assert len(lines) == 1 and "BackendCompilerFailed" in lines[0], lines


def test_errors_after_a_successful_call_are_not_swallowed_on_cpu(greedy_trainer, tokenizer, monkeypatch):
    trainer, ids = greedy_trainer, _prompt_ids(tokenizer)
    trainer._fast_generation = FastGeneration(bucket=16, compile=False)
    _fast(trainer, ids)

    def broken_generate(*args, **kwargs):
        raise ValueError("a bug unrelated to compilation")

    monkeypatch.setattr(trainer.model, "generate", broken_generate)
    with pytest.raises(ValueError, match="unrelated"):
        _fast(trainer, ids)
    assert trainer._fast_generation.disabled is None


def test_conflicting_cache_implementation_raises_on_cpu(make_trainer, tokenizer):
    trainer = make_trainer(fast_generation=True, cache_implementation="offloaded")
    with pytest.raises(ValueError, match="cache_implementation"):
        _fast(trainer, _prompt_ids(tokenizer))


def test_training_steps_compile_once_with_checkpointing_on_cpu(make_trainer):
    """Three optimizer steps with activation checkpointing on (TRL toggles it around each generation): the decode
    step compiles during the first generation only."""
    from transformers import TrainerCallback

    backend = CountingEager()
    compiles_per_step = []

    class Count(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            compiles_per_step.append(backend.compiles)

    trainer = make_trainer(fast_generation=True, max_steps=3, gradient_checkpointing=True)
    trainer.add_callback(Count())
    trainer._fast_generation = FastGeneration(bucket=16, compile_config=_compiled_everywhere(backend.backend))
    trainer.train()
    state = trainer._fast_generation
    assert trainer.state.global_step == 3 and state.calls == 3 and state.disabled is None
    assert compiles_per_step[0] >= 1 and compiles_per_step == compiles_per_step[:1] * 3, compiles_per_step
    # TRL toggles checkpointing twice per step (generation, old log-probs), each adding a hook: bounded, not growing.
    assert len(_require_grads_hooks(trainer.model)) <= 2
