"""A tiny Llama trained from scratch on the arithmetic task: an offline policy that RL can improve in minutes on a CPU.

- Tokenizer: one token per character over ``0-9 + - * = `` and space, plus ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``
  (19 symbols), built with the ``tokenizers`` library and wrapped as ``transformers.PreTrainedTokenizerFast``. Encoding
  prepends ``<bos>`` (TRL tokenizes plain-text prompts with the default ``add_special_tokens=True``); it has no chat
  template, so tasks give it plain-text prompts.
- Model: ``LlamaForCausalLM`` built from a config (4 layers, d=128, FFN 512, 4 heads, tied embeddings; 1.05M params).
- SFT: next-token loss on the answer and ``<eos>`` only (not the prompt), AdamW lr 1e-3, batch 128, drawn from the
  ``train`` side of the split. Every ``eval_every`` steps it samples (temperature 1.0, no top-k/top-p)
  ``samples_per_prompt`` answers for each of ``n_eval_prompts`` held-out prompts and stops once the accuracy reaches
  ``target_accuracy``. About 0.3 is a good start for RL: most groups of 8 samples then hold both right and wrong
  answers, so group-normalised advantages are non-zero. Much higher (0.9+) leaves few mixed groups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from apo.tasks.arithmetic import ArithmeticTask, all_problems, generate
from apo.tasks.rewards import arithmetic_reward

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
CHARS = " 0123456789+-*="
METADATA_FILE = "apo_tiny_arith.json"
FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"


def char_tokenizer(chars: str = CHARS, vocab_size: int | None = None, **kwargs):
    """A ``PreTrainedTokenizerFast`` with one token per character of ``chars`` after ``<pad> <bos> <eos> <unk>``.

    Encoding prepends ``<bos>``; characters outside ``chars`` map to ``<unk>``; no chat template. ``vocab_size``
    pads the vocabulary with ``<tN>`` filler tokens (for benchmarks with a real model's vocabulary size);
    ``kwargs`` go to ``PreTrainedTokenizerFast`` (``padding_side``, ``model_max_length``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIAL_TOKENS.values()) + list(chars)
    if vocab_size is not None:
        tokens += [f"<t{i}>" for i in range(len(tokens), vocab_size)]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        **kwargs,
    )


def build_tokenizer():
    """The tiny model's tokenizer: :func:`char_tokenizer` over ``CHARS`` (19 tokens), left padding.

    ``tok("37+58=")["input_ids"]`` is ``[bos, '3', '7', '+', '5', '8', '=']``;
    ``tok.decode(ids, skip_special_tokens=True)`` gives the characters back.
    """
    return char_tokenizer(CHARS, padding_side="left", model_max_length=128)


def build_model(tokenizer, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` (4 layers, d=128, FFN 512, 4 heads, tied embeddings), fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    samples_per_prompt: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> list[list[str]]:
    """Sample ``samples_per_prompt`` completions per prompt (pure sampling: no top-k, no top-p).

    Returns a list of ``len(prompts)`` lists of ``samples_per_prompt`` decoded strings (special tokens removed).
    """
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids = enc["input_ids"].repeat_interleave(samples_per_prompt, 0)
    mask = enc["attention_mask"].repeat_interleave(samples_per_prompt, 0)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return [texts[i * samples_per_prompt : (i + 1) * samples_per_prompt] for i in range(len(prompts))]


def sampled_accuracy(
    model, tokenizer, rows: list[dict], samples_per_prompt: int = 8, temperature: float = 1.0, seed: int = 0
) -> dict:
    """Sampled accuracy on ``rows`` (``{"prompt", "answer"}``) scored by ``arithmetic_reward``.

    Returns ``{"accuracy": float, "mixed_groups": float}``: the mean reward over all samples, and the fraction of
    prompts whose ``samples_per_prompt`` samples hold both a right and a wrong answer.
    """
    max_new = max(len(r["answer"]) for r in rows) + 2
    groups = sample_completions(
        model, tokenizer, [r["prompt"] for r in rows], samples_per_prompt, temperature, max_new, seed
    )
    total, mixed = 0.0, 0
    for row, comps in zip(rows, groups, strict=True):
        scores = arithmetic_reward(comps, answer=[row["answer"]] * len(comps))
        total += sum(scores)
        mixed += 0 < sum(scores) < len(scores)
    return {"accuracy": total / (len(rows) * samples_per_prompt), "mixed_groups": mixed / len(rows)}


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _encode_sft_batch(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids_BT, attention_mask_BT, labels_BT)``: right-padded; labels are -100 except answer + eos."""
    prompts = tokenizer([r["prompt"] for r in rows])["input_ids"]
    answers = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    seqs = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers, strict=True)]
    T = max(len(s) for s in seqs)
    ids_BT = torch.full((len(seqs), T), tokenizer.pad_token_id)
    mask_BT = torch.zeros((len(seqs), T), dtype=torch.long)
    labels_BT = torch.full((len(seqs), T), -100)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids_BT[i, : len(s)] = torch.tensor(s)
        mask_BT[i, : len(s)] = 1
        labels_BT[i, len(p) : len(s)] = torch.tensor(s[len(p) :])
    return ids_BT, mask_BT, labels_BT


def train_tiny_arith(
    task: ArithmeticTask | None = None,
    target_accuracy: float = 0.3,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    eval_every: int = 25,
    eval_every_near: int = 5,
    n_eval_prompts: int = 200,
    samples_per_prompt: int = 8,
    max_steps: int = 20_000,
    num_threads: int = 1,
):
    """Train the tiny model from scratch until its sampled held-out accuracy reaches ``target_accuracy``.

    Args:
        task: the arithmetic problems (default: 2-digit addition).
        target_accuracy: stop once the sampled (T=1) accuracy on held-out prompts is at least this.
        seed: seeds the initialisation, the training draws and the evaluation samples.
        batch_size, lr: AdamW settings (weight decay 0.0).
        eval_every: steps between accuracy checks; each check samples ``n_eval_prompts * samples_per_prompt`` answers
            (about 1 s for 1,600).
        eval_every_near: steps between checks once the accuracy passed half the target: accuracy climbs fast
            there (0.16 -> 0.40 in 25 steps), and checking often stops the run close to the target.
        max_steps: give up after this many steps.
        num_threads: torch threads. 1 by default: at this size (1M params, 128 x ~10 tokens) a step is dominated by
            per-op overhead, so a second thread gains little, and on a shared 2-core machine 2 threads degrade badly
            when another process runs (FINDINGS: a matmul went 0.5 ms -> 4 ms).

    Returns:
        ``(model, tokenizer, metadata)`` where ``metadata`` holds the settings, the steps, the reached accuracy and
        the seconds taken.

    Raises:
        ValueError: ``target_accuracy`` outside (0, 1].
        RuntimeError: the target is not reached within ``max_steps``.
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy={target_accuracy}: must be in (0, 1]")
    task = task or ArithmeticTask()
    with _torch_threads(num_threads):
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed)
        train_rows = all_problems(task, "train") if task.n_problems <= 200_000 else None
        eval_rows = generate(task, "eval", min(n_eval_prompts, _eval_size(task)), seed=seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        start, history, every = time.perf_counter(), [], eval_every
        for step in range(1, max_steps + 1):
            if train_rows is not None:
                idx = torch.randint(len(train_rows), (batch_size,), generator=gen).tolist()
                rows = [train_rows[i] for i in idx]
            else:
                rows = generate(task, "train", batch_size, seed=seed * 1_000_003 + step)
            ids_BT, mask_BT, labels_BT = _encode_sft_batch(tokenizer, rows)
            loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % every == 0:
                stats = sampled_accuracy(model, tokenizer, eval_rows, samples_per_prompt, seed=seed + step)
                elapsed = time.perf_counter() - start
                history.append({"step": step, "seconds": round(elapsed, 1), "loss": round(loss.item(), 4), **stats})
                logger.info(
                    "tiny-arith step %d loss %.3f sampled acc %.3f mixed %.2f (%.0f s)",
                    step,
                    loss.item(),
                    stats["accuracy"],
                    stats["mixed_groups"],
                    elapsed,
                )
                if stats["accuracy"] >= target_accuracy:
                    break
                if stats["accuracy"] >= 0.5 * target_accuracy:
                    every = eval_every_near
        else:
            raise RuntimeError(
                f"tiny-arith SFT did not reach target_accuracy={target_accuracy} within max_steps={max_steps} "
                f"(last sampled accuracy {history[-1]['accuracy'] if history else 'n/a'})"
            )
    model.eval()
    metadata = {
        **_identity(task, target_accuracy, seed),
        "steps": step,
        "eval_accuracy": stats["accuracy"],
        "eval_mixed_groups": stats["mixed_groups"],
        "seconds": round(time.perf_counter() - start, 1),
        "num_threads": num_threads,
        "n_params": sum(p.numel() for p in model.parameters()),
        "history": history,
    }
    return model, tokenizer, metadata


def _eval_size(task: ArithmeticTask) -> int:
    return len(all_problems(task, "eval")) if task.n_problems <= 200_000 else 10**9


def _identity(task: ArithmeticTask, target_accuracy: float, seed: int) -> dict:
    """What a checkpoint was built for; two checkpoints with equal identities are interchangeable."""
    return {"format": FORMAT_VERSION, "seed": seed, "target_accuracy": target_accuracy, "task": task.to_dict()}


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of a tiny-arith checkpoint folder, or None if it has none."""
    f = Path(path) / METADATA_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _matches(meta: dict | None, identity: dict) -> bool:
    return meta is not None and all(meta.get(k) == v for k, v in identity.items())


def save_checkpoint(model, tokenizer, metadata: dict, path: str | os.PathLike) -> Path:
    """Save model (safetensors), tokenizer and metadata into ``path`` atomically: a temp folder beside it, then a
    rename. If ``path`` appears meanwhile (another process built it), that one is kept and ours is discarded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; the cache may be shared
            f.chmod(0o755 if f.is_dir() else 0o644)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / METADATA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def prepare_tiny_arith(
    cache_dir: str | os.PathLike,
    target_accuracy: float = 0.3,
    seed: int = 0,
    task: ArithmeticTask | None = None,
    **train_kwargs,
) -> Path:
    """The folder of a tiny-arith checkpoint (``save_pretrained`` format) for these settings, built at most once.

    Order of lookup: the checkpoint shipped in ``apo/assets/tiny-arith`` if its metadata (format, seed,
    target_accuracy, task) matches; else ``cache_dir/tiny-arith-<hash of the settings>`` if already built; else it
    trains one (``train_tiny_arith``, about 1.5 minutes on one CPU thread for the defaults) and saves it there
    atomically.

    Returns:
        The checkpoint folder: load it with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.
    """
    task = task or ArithmeticTask()
    identity = _identity(task, target_accuracy, seed)
    if _matches(read_metadata(SHIPPED_DIR), identity):
        return SHIPPED_DIR
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"tiny-arith-{key}"
    if _matches(read_metadata(path), identity):
        return path
    logger.info("building tiny-arith checkpoint %s (seed=%d, target_accuracy=%s)", path, seed, target_accuracy)
    model, tokenizer, metadata = train_tiny_arith(task, target_accuracy, seed, **train_kwargs)
    return save_checkpoint(model, tokenizer, metadata, path)
