"""A policy's held-out evaluation: sampled completions of each prompt, scored by the reward, with the coverage
measures of :mod:`apo.tasks.evaluation` and 95% intervals over prompts (:mod:`apo.stats`); and what two evaluations
of the same prompts say together (:func:`reward_gain`, :func:`coverage_summary`). ``apo eval`` and a run's
``eval_before.json`` / ``eval_after.json`` come from :func:`evaluate`.
"""

from __future__ import annotations

import math
from typing import Any

from apo.stats import mean_ci, nan_to_none
from apo.tasks.evaluation import (
    distinct_answers,
    eval_pass_ks,
    mean_token_entropy,
    pass_at_k_per_prompt,
    token_entropy_recorder,
)


def evaluate(
    model,
    tokenizer,
    dataset,
    reward_fn,
    *,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 64,
    chat_template_kwargs: dict | None = None,
    truncated_completions: str = "zero",
    pass_ks: list[int] | None = None,
    answer_format: str | None = None,
    processes=None,
) -> dict[str, Any]:
    """Mean reward of ``samples`` sampled completions per prompt of ``dataset`` (TRL's prompt handling, through
    :func:`apo.tasks.datasets.render_prompts`: chat template with ``chat_template_kwargs`` for conversational prompts,
    the tokenizer's special tokens otherwise). Deterministic for a fixed ``seed``. A completion that reaches
    ``max_new_tokens`` without EOS is truncated (TRL's rule: its last token is neither EOS nor pad) and, with
    ``truncated_completions="zero"``, scores 0, as in training.

    Returns ``{"reward": mean, "reward_ci95": half-width of the 95% t-interval of the mean over prompts (the
    per-prompt mean rewards are the units: samples of one prompt are not independent), "pass_at_least_one": fraction
    of prompts with a positive reward, "clipped_ratio": fraction of truncated completions, "prompts": n, "samples":
    samples, "prompt_rewards": the n per-prompt mean rewards, in dataset order}``, and the coverage measures of
    :mod:`apo.tasks.evaluation`, each a mean over prompts with its 95% t half-width over prompts: ``"pass_at_k"``
    and ``"pass_at_k_ci95"`` (``{"k": value}`` for every k of ``pass_ks``, default ``1..samples``; unbiased
    estimator, a sample is correct at full credit), ``"distinct_answers"`` (distinct answers among a prompt's
    samples, extracted with ``answer_format``; per prompt in ``"prompt_distinct_answers"``), ``"token_entropy"``
    (mean entropy in nats of the sampling distribution over a completion's tokens).

    ``processes``: the processes of a launch that share the work, as an object with ``rank()``, ``world_size()`` and
    ``gather(obj) -> [obj of each rank]`` (the ``apo`` command passes :mod:`apo.cli.ranks`). The batches of
    ``batch_size`` prompts are then dealt out in turn (batch ``b`` to rank ``b mod world_size``) and the results
    gathered on every rank: each batch is sampled from its own seed, drawn in order from ``seed``, so the samples and
    the result are those of one process. With ``None`` this process evaluates every batch (and so does every rank of a
    model sharded over the ranks, which runs each forward on all of them).
    """
    import torch

    ks = eval_pass_ks(samples, pass_ks)
    eos = model.generation_config.eos_token_id
    eos_and_pad = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    was_training = model.training
    model.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in batches]  # drawn in order on every rank
    sample = dict(samples=samples, temperature=temperature, max_new_tokens=max_new_tokens)
    mine = {
        b: _evaluate_batch(model, tokenizer, batch, reward_fn, seeds[b], eos_and_pad, chat_template_kwargs, **sample)
        for b, batch in enumerate(batches)
        if processes is None or b % processes.world_size() == processes.rank()
    }
    parts: dict[int, tuple] = {}
    for part in processes.gather(mine) if processes is not None else [mine]:
        parts.update(part)
    rewards: list[float] = []
    completion_texts: list[str] = []
    entropies: list[float] = []
    clipped = 0
    for b in range(len(batches)):
        scores, cut, batch_entropies, completions = parts[b]
        if truncated_completions == "zero":
            scores = [0.0 if c else s for s, c in zip(scores, cut, strict=True)]
        clipped += sum(cut)
        rewards.extend(scores)
        entropies.extend(batch_entropies)
        completion_texts.extend(completions)
    if was_training:
        model.train()
    per_prompt = [rewards[i * samples : (i + 1) * samples] for i in range(len(rows))]
    prompt_rewards = [sum(scores) / samples for scores in per_prompt]
    passes = pass_at_k_per_prompt(per_prompt, ks)
    distinct = distinct_answers(
        [completion_texts[i * samples : (i + 1) * samples] for i in range(len(rows))], answer_format
    )
    prompt_entropy = [sum(entropies[i * samples : (i + 1) * samples]) / samples for i in range(len(rows))]
    return {
        "reward": sum(rewards) / max(1, len(rewards)),
        "reward_ci95": nan_to_none(mean_ci(prompt_rewards)[1]),
        "pass_at_least_one": sum(any(s > 0 for s in scores) for scores in per_prompt) / max(1, len(rows)),
        "clipped_ratio": clipped / max(1, len(rewards)),
        "prompts": len(rows),
        "samples": samples,
        "prompt_rewards": prompt_rewards,
        "pass_at_k": {str(k): nan_to_none(mean_ci(v)[0]) for k, v in passes.items()},
        "pass_at_k_ci95": {str(k): nan_to_none(mean_ci(v)[1]) for k, v in passes.items()},
        "distinct_answers": nan_to_none(mean_ci(distinct)[0]),
        "distinct_answers_ci95": nan_to_none(mean_ci(distinct)[1]),
        "prompt_distinct_answers": distinct,
        "token_entropy": nan_to_none(mean_ci(prompt_entropy)[0]),
        "token_entropy_ci95": nan_to_none(mean_ci(prompt_entropy)[1]),
    }


def _evaluate_batch(
    model,
    tokenizer,
    batch,
    reward_fn,
    seed,
    eos_and_pad,
    chat_template_kwargs,
    *,
    samples,
    temperature,
    max_new_tokens,
):
    """One batch of :func:`evaluate`: ``(scores, cut, entropies, completions)``, each with ``len(batch) * samples``
    entries in prompt-major order (a prompt's samples together): the reward of each completion (0 where the reward
    failed), whether it was cut at ``max_new_tokens``, its mean token entropy, and its text. Sampled with
    ``torch.manual_seed(seed)``, so a batch gives the same samples on whichever process evaluates it."""
    import torch

    from apo.tasks.datasets import render_prompts

    device = next(model.parameters()).device
    prompts = [r["prompt"] for r in batch]
    texts, special = render_prompts(tokenizer, prompts, chat_template_kwargs)
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=special)
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    torch.manual_seed(seed)
    recorder = token_entropy_recorder(temperature)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=[recorder],
        )
    completion_ids = out[:, enc["input_ids"].shape[1] :]
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    cut = [ids.numel() > 0 and int(ids[-1]) not in eos_and_pad for ids in completion_ids]
    entropies = mean_token_entropy(recorder.entropies_BT(), _completion_lengths(completion_ids, eos_and_pad))
    columns = {k: [r[k] for r in batch for _ in range(samples)] for k in batch[0] if k != "prompt"}
    scores = reward_fn(prompts=[p for p in prompts for _ in range(samples)], completions=completions, **columns)
    scores = [0.0 if s is None or not math.isfinite(s) else float(s) for s in scores]
    return scores, cut, list(entropies), completions


def _completion_lengths(completion_ids, eos_and_pad: set) -> list[int]:
    """``[B]``: tokens of each completion row up to and including its first EOS or pad (all of them when it has
    none): the steps whose sampling distribution produced the completion."""
    lengths = []
    for ids in completion_ids.tolist():
        stop = next((i for i, t in enumerate(ids) if t in eos_and_pad), None)
        lengths.append(len(ids) if stop is None else stop + 1)
    return lengths


def reward_gain(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``{"reward_gain": after - before, "reward_gain_ci95": half-width}`` of two :func:`evaluate` results on the same
    prompts: the 95% t-interval of the mean of the paired per-prompt differences ``after_j - before_j`` over the
    ``n`` prompts (``t_{0.975, n-1} * s_d / sqrt(n)``). ``reward_gain_ci95`` is ``None`` when either result lacks
    ``prompt_rewards`` or their prompt counts differ (no pairing)."""
    gain: dict[str, Any] = {"reward_gain": after["reward"] - before["reward"], "reward_gain_ci95": None}
    xs, ys = before.get("prompt_rewards"), after.get("prompt_rewards")
    if xs is not None and ys is not None and len(xs) == len(ys):
        gain["reward_gain_ci95"] = nan_to_none(mean_ci([y - x for x, y in zip(xs, ys, strict=True)])[1])
    return gain


def coverage_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The coverage measures of two :func:`evaluate` results for ``summary.json``: ``pass_at_k_before`` /
    ``_after`` (``{"k": value}``), ``token_entropy_before`` / ``_after``, ``distinct_answers_before`` / ``_after``
    (None where an older result lacks them)."""
    out: dict[str, Any] = {}
    for key in ("pass_at_k", "token_entropy", "distinct_answers"):
        out[f"{key}_before"], out[f"{key}_after"] = before.get(key), after.get(key)
    return out
