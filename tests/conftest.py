"""Shared fixtures: a tiny Llama and a character-level tokenizer built locally (no model hub), and a prompt dataset.

The model is random-init (2 layers, d=32), so sampled completions are random strings and rewards vary within groups.
``make_trainer`` builds an :class:`apo.APOTrainer` on it with fast, offline defaults.
"""

from __future__ import annotations

import os

import pytest
import torch

from apo.tasks.tiny import char_tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CHARS = " 0123456789+-*=ab"


def build_char_tokenizer():
    """One token per character of ``CHARS`` plus ``<pad> <bos> <eos> <unk>``; encoding prepends ``<bos>``."""
    return char_tokenizer(CHARS)


def build_tiny_llama(tokenizer, seed: int = 0, init_std: float = 0.02):
    """A ~30k-parameter ``LlamaForCausalLM`` (2 layers, d=32, 2 heads) for ``tokenizer``, fp32, seeded.

    ``init_std`` is the weight init scale: the default 0.02 gives near-uniform next-token distributions (entropy
    ~ log V); 0.5 gives peaked ones, so entropy-based confidences are far from 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_a_reward(completions, **kwargs):
    """Fraction of ``a`` characters in each completion: varies across random completions, so groups are mixed."""
    return [sum(c == "a" for c in text) / max(1, len(text)) for text in completions]


def hash_reward(completions, **kwargs):
    """A deterministic pseudo-random reward in [0, 1] of the completion text: differs whenever the texts differ."""
    return [(sum(ord(c) * (i + 1) for i, c in enumerate(text)) % 5) / 4 for text in completions]


def prompt_dataset(n: int = 16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"{i % 10}+{(3 * i) % 10}=" for i in range(n)]})


FAST_DEFAULTS = dict(
    max_completion_length=8,
    num_generations=4,
    per_device_train_batch_size=4,
    max_steps=2,
    learning_rate=1e-2,
    report_to="none",
    use_cpu=True,
    bf16=False,
    logging_steps=1,
    save_strategy="no",
    beta=0.0,
    seed=0,
    temperature=1.0,
    disable_tqdm=True,
    dataloader_num_workers=0,
    # Random-init completions rarely end before max_completion_length; grading them keeps rewards varied (the
    # default "zero" policy is tested on its own in test_trainer.py).
    truncated_completions="grade",
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def make_trainer(tokenizer, tmp_path):
    """``make_trainer(**config_overrides) -> APOTrainer`` on a fresh tiny model (seed 0) and 16 prompts."""

    def make(
        *,
        reward_funcs=None,
        dataset=None,
        eval_dataset=None,
        trainer_cls=None,
        config_cls=None,
        init_std=0.02,
        **overrides,
    ):
        from apo import APOConfig, APOTrainer

        config_cls = config_cls or APOConfig
        trainer_cls = trainer_cls or APOTrainer
        kwargs = {**FAST_DEFAULTS, "output_dir": str(tmp_path / "out"), **overrides}
        args = config_cls(**kwargs)
        return trainer_cls(
            model=build_tiny_llama(tokenizer, init_std=init_std),
            reward_funcs=reward_funcs or count_a_reward,
            args=args,
            train_dataset=dataset if dataset is not None else prompt_dataset(),
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
        )

    return make
