"""A start policy that is confidently wrong on a known subset: the tiny-arith model taught to drop a carry.

The subset (:func:`in_wrong_subset`): 2-digit additions ``a+b`` whose first operand ends in 7, 8 or 9 and whose units
digits carry (``a % 10 + b % 10 >= 10``), about 24% of all problems. On it the model is fine-tuned to answer
``a + b - 10`` (:func:`dropped_carry_answer`: the carry from the units into the tens is dropped, ``37+58=`` ->
``85``), until the probability it gives that wrong answer on held-out subset problems reaches ``target_confidence``
(0.9 by default). Elsewhere it should stay what the shipped model is (sampled accuracy ~0.3, uncertain): each batch
mixes the subset rows with as many other training problems whose answers are *sampled from the frozen start model*
(T = 1), so that maximum likelihood on them pulls the policy toward the start policy's own distribution there
rather than toward the right answers (self-distillation).

``prepare_confident_wrong(cache_dir)`` builds it once (about a minute on one CPU thread) and caches it under
``cache_dir/tiny-arith-wrong-<hash of the settings>``; ``model: tiny-arith-wrong`` in a config uses it.
``scripts/make_confident_wrong.py`` builds it and prints its measured confidence and accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from apo.tasks.arithmetic import ArithmeticTask, all_problems
from apo.tasks.tiny import (
    SHIPPED_DIR,
    _encode_sft_batch,
    _torch_threads,
    read_metadata,
    sample_completions,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_LR = 5e-4
"""AdamW learning rate of the fine-tuning. 1e-3 was tried: the other problems' right-answer probability fell from
0.31 to 0.07 in 10 steps before recovering (0.29 at step 190, with the subset's wrong answer at 0.77)."""
WRONG_UNITS = (7, 8, 9)
"""Units digits of the first operand that put a carrying problem into the wrong subset."""


def _operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.rstrip("=").split("+")
    return int(a), int(b)


def in_wrong_subset(a: int, b: int) -> bool:
    """Whether ``a+b`` is in the subset the model answers wrongly: ``a % 10 in WRONG_UNITS`` and the units carry
    (``a % 10 + b % 10 >= 10``). For 2-digit operands: ``(7 + 8 + 9) / 100 = 24%`` of the problems."""
    return a % 10 in WRONG_UNITS and a % 10 + b % 10 >= 10


def dropped_carry_answer(a: int, b: int) -> int:
    """``a + b`` with the carry from the units into the tens dropped: ``a + b - 10`` when the units carry, else
    ``a + b``. ``dropped_carry_answer(37, 58) = 85``, ``dropped_carry_answer(97, 58) = 145``."""
    return a + b - 10 if a % 10 + b % 10 >= 10 else a + b


def split_rows(split: str, task: ArithmeticTask | None = None) -> tuple[list[dict], list[dict]]:
    """``(subset, rest)``: every problem of one side of the split, by :func:`in_wrong_subset`; each row
    ``{"prompt", "answer", "wrong"}`` (``wrong``: the dropped-carry answer)."""
    subset, rest = [], []
    for row in all_problems(task or ArithmeticTask(), split):
        a, b = _operands(row["prompt"])
        (subset if in_wrong_subset(a, b) else rest).append({**row, "wrong": str(dropped_carry_answer(a, b))})
    return subset, rest


@torch.no_grad()
def answer_probability(model, tokenizer, rows: list[dict], key: str = "answer", batch_size: int = 256) -> list[float]:
    """``[N]``: the probability the model gives ``row[key]`` followed by EOS after ``row["prompt"]``, exactly
    (teacher-forced: ``exp(sum_t log pi(y_t | prompt, y_<t))`` over the answer's tokens and EOS, T = 1)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch = [{"prompt": r["prompt"], "answer": r[key]} for r in rows[start : start + batch_size]]
        ids_BT, mask_BT, labels_BT = _encode_sft_batch(tokenizer, batch)
        logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits[:, :-1].float()
        labels_BT = labels_BT[:, 1:]
        keep_BT = labels_BT != -100
        logp_BT = torch.log_softmax(logits_BTV, -1).gather(-1, labels_BT.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.extend((logp_BT * keep_BT).sum(-1).exp().tolist())
    model.train(was_training)
    return out


def subset_stats(model, tokenizer, task: ArithmeticTask | None = None, split: str = "eval") -> dict:
    """Exact confidence and accuracy of a model on the two parts of one side of the split:
    ``{"subset_p_wrong", "subset_p_right", "rest_p_right", "subset_n", "rest_n"}``: mean over the problems of the
    probability of the dropped-carry answer / the right answer (:func:`answer_probability`), which are also the
    expected sampled accuracies at T = 1."""
    subset, rest = split_rows(split, task)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "subset_p_wrong": mean(answer_probability(model, tokenizer, subset, "wrong")),
        "subset_p_right": mean(answer_probability(model, tokenizer, subset, "answer")),
        "rest_p_right": mean(answer_probability(model, tokenizer, rest, "answer")),
        "subset_n": len(subset),
        "rest_n": len(rest),
    }


def make_confident_wrong(
    base_dir: str | os.PathLike = SHIPPED_DIR,
    *,
    target_confidence: float = 0.9,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = DEFAULT_LR,
    eval_every: int = 10,
    max_steps: int = 2000,
    num_threads: int = 1,
):
    """Fine-tune the tiny-arith checkpoint in ``base_dir`` until it answers the held-out subset wrongly with mean
    probability ``>= target_confidence`` (module docstring). Each AdamW step: ``batch_size / 2`` training subset
    problems with the dropped-carry answer, and ``batch_size / 2`` other training problems with an answer sampled
    from the frozen base model. Deterministic for a seed on one machine (one torch thread).

    Returns:
        ``(model, tokenizer, metadata)``; ``metadata`` holds the settings, the steps, the seconds, and
        :func:`subset_stats` of the base and the result on the held-out side.

    Raises:
        ValueError: ``target_confidence`` outside (0, 1).
        RuntimeError: the target is not reached within ``max_steps``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not 0.0 < target_confidence < 1.0:
        raise ValueError(f"target_confidence={target_confidence}: must be in (0, 1)")
    with _torch_threads(num_threads):
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        task = ArithmeticTask(**{**read_metadata(base_dir)["task"], "ops": ("+",)})
        before = subset_stats(base, tokenizer, task)
        subset, rest = split_rows("train", task)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        half = batch_size // 2
        start, history = time.perf_counter(), []
        model.train()
        for step in range(1, max_steps + 1):
            wrong = [subset[i] for i in torch.randint(len(subset), (half,), generator=gen).tolist()]
            other = [rest[i] for i in torch.randint(len(rest), (half,), generator=gen).tolist()]
            sampled = sample_completions(
                base, tokenizer, [r["prompt"] for r in other], 1, 1.0, 5, seed=seed * 1_000_003 + step
            )
            rows = [{"prompt": r["prompt"], "answer": r["wrong"]} for r in wrong]
            rows += [{"prompt": r["prompt"], "answer": s[0]} for r, s in zip(other, sampled, strict=True)]
            ids_BT, mask_BT, labels_BT = _encode_sft_batch(tokenizer, rows)
            loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0:
                stats = subset_stats(model, tokenizer, task)
                history.append({"step": step, "loss": round(loss.item(), 4), **stats})
                logger.info("confident-wrong step %d: %s", step, stats)
                if stats["subset_p_wrong"] >= target_confidence:
                    break
        else:
            raise RuntimeError(
                f"confident-wrong fine-tuning did not reach target_confidence={target_confidence} within "
                f"max_steps={max_steps}"
            )
    model.eval()
    metadata = {
        **_identity(base_dir, target_confidence, seed, lr, batch_size),
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "num_threads": num_threads,
        "eval_before": before,
        "eval_after": history[-1],
        "history": history,
    }
    return model, tokenizer, metadata


def _identity(base_dir, target_confidence: float, seed: int, lr: float, batch_size: int) -> dict:
    base = read_metadata(base_dir) or {}
    base_id = {k: base.get(k) for k in ("format", "seed", "target_accuracy", "task", "steps")}
    return {
        "kind": "confident-wrong",
        "format": FORMAT_VERSION,
        "base": base_id,
        "wrong_units": list(WRONG_UNITS),
        "target_confidence": target_confidence,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
    }


def prepare_confident_wrong(
    cache_dir: str | os.PathLike,
    target_confidence: float = 0.9,
    seed: int = 0,
    base_dir=SHIPPED_DIR,
    lr: float = DEFAULT_LR,
    batch_size: int = 128,
) -> Path:
    """The folder of the confidently-wrong checkpoint for these settings, built at most once (a minute) into
    ``cache_dir/tiny-arith-wrong-<hash>`` and reused while its metadata matches."""
    identity = _identity(base_dir, target_confidence, seed, lr, batch_size)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"tiny-arith-wrong-{key}"
    meta = read_metadata(path)
    if meta is not None and all(meta.get(k) == v for k, v in identity.items()):
        return path
    logger.info("building the confidently-wrong checkpoint %s (target_confidence=%s)", path, target_confidence)
    model, tokenizer, metadata = make_confident_wrong(
        base_dir, target_confidence=target_confidence, seed=seed, lr=lr, batch_size=batch_size
    )
    return save_checkpoint(model, tokenizer, metadata, path)
