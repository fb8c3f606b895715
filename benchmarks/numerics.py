"""Numerics of low-precision training on this CPU: do the weights move, and is the anchor signal or rounding?

Three tables (docs/numerics.md quotes them):

1. ``weights``: fraction of the trainable weights that differ from the start after 1 and ``--steps`` AdamW steps, for
   learning rates 1e-6 ... 1e-4, in three set-ups: ``bf16-pure`` (bf16 weights, torch AdamW: what ``bf16: true`` did
   before), ``fp32-master`` (fp32 weights and states, bf16 autocast: the default now; ``step*`` counts the fp32
   weights, ``step*_low_view`` the bf16 copy that autocast's matmuls compute with), ``bf16-kahan`` (bf16 weights,
   torch-optimi AdamW with Kahan summation: ``master_weights=false``). Loss: ``-mean_i A_i l_i`` on random tokens with
   random signs ``A_i`` (an Adam step's size does not depend on the loss).
2. ``anchor``: real completions of ``--length`` tokens sampled from the model (``min_new_tokens`` forces the length);
   the policy takes ``k`` fp32 AdamW steps at lr ``--lr`` (the paper's 1.5e-5) on a ``-mean_i A_i l_i`` loss with
   A = +-1; for each ``k`` and each precision mode, the error against an fp64 forward of the same weights of
   APO's ``u_i = (l_i(theta_k) - l_i(theta_0)) / tau`` (sequence sums, tau = 0.8), GSPO's sequence log-ratio
   ``(l_i(theta_k) - l_i(theta_0)) / T_i`` and GRPO's per-token log-ratios ``log r_t``: ``mean |err| / mean |ref|``.
   Log-probs go through TRL's fused LM head (``add_fused_lm_head``), as in training. Modes: ``bf16-pure`` (bf16
   weights), ``autocast`` (fp32 weights, bf16 autocast, bf16 logits), ``autocast+fp32-head``
   (``cast_lm_head_to_fp32``: the LM head and log-softmax in fp32), ``fp16-pure`` and ``fp16-autocast+fp32-head``
   (the same two in fp16: 10 mantissa bits against bf16's 7; CPU autocast runs fp16 matmuls), ``fp32-passes`` (the
   trainer's ``fp32_anchor_passes``: a model prepared by accelerate with bf16 mixed precision, scored inside
   ``apo.integrations.trl.precision.fp32_forward`` and ``accelerator.autocast()``, as TRL's pass enters it), ``fp32``.
3. ``cost``: forward + backward of the fused log-prob path at the model's shape, bf16 autocast with and without the
   fp32 LM head, alternated call by call (``--repeats``); the median paired time ratio, and the peak RSS of each mode
   measured in its own subprocess. Absolute times are inflated on a shared machine: read the ratio.
4. ``passes``: the same forward + backward, bf16 autocast with the fp32 head (a bf16 run's passes without
   ``fp32_anchor_passes``) against fp32 (with it), alternated call by call; the median paired time ratio.

    python benchmarks/numerics.py --model tiny-arith                 # all tables, tiny model (~1 min)
    python benchmarks/numerics.py --model smollm2 --quick            # SmolLM2: lr 1.5e-5 only, k = 1 (~10 min)
    python benchmarks/numerics.py --model smollm2 --tables anchor,cost
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

warnings.filterwarnings("ignore")
TAU = 0.8
DEVICE = "cpu"  # --device; "cuda" on a GPU (benchmarks/gpu_numerics.sh)
LOW = torch.bfloat16  # --low-dtype


def load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apo.tasks.models import resolve_model

    path = resolve_model(name, os.path.expanduser("~/.cache/apo"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE)
    return model, tok


def fraction_changed(model, start: dict[str, torch.Tensor], view: torch.dtype | None = None) -> float:
    """Fraction of trainable weights whose value (or whose ``view`` rounding) differs from ``start``."""
    changed = total = 0
    for name, p in model.named_parameters():
        a, b = p.detach(), start[name]
        if view is not None:
            a, b = a.to(view), b.to(view)
        changed += int((a.float() != b.float()).sum())
        total += p.numel()
    return changed / total


def random_batch(vocab: int, n: int, t: int, gen: torch.Generator):
    ids = torch.randint(0, vocab, (n, t), generator=gen)
    signs = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    return ids.to(DEVICE), signs.to(DEVICE)


def seq_logp_plain(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    """``[N, T - start]`` per-token log-probs of ``ids[:, start:]`` from a plain forward (in the model's dtype)."""
    logits = model(input_ids=ids).logits[:, start - 1 : -1]
    return torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1).gather(
        -1, ids[:, start:].unsqueeze(-1)
    )[..., 0]


def weights_table(model0, steps: int, lrs: list[float], batch: int, length: int) -> list[dict]:
    """Table 1 (see the module docstring)."""
    from apo.integrations.trl.precision import kahan_adamw

    vocab = model0.config.vocab_size
    rows = []
    for lr in lrs:
        for setup in ("bf16-pure", "fp32-master", "bf16-kahan"):
            model = copy.deepcopy(model0)
            if setup != "fp32-master":
                model.to(LOW)
            start = {k: v.detach().clone() for k, v in model.named_parameters()}
            if setup == "bf16-kahan":
                opt = kahan_adamw(model, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
            else:
                opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            gen = torch.Generator().manual_seed(0)
            row = {"lr": lr, "setup": setup}
            t0 = time.time()
            for step in range(1, steps + 1):
                ids, signs = random_batch(vocab, batch, length, gen)
                with torch.autocast(DEVICE, dtype=LOW):
                    logp = seq_logp_plain(model, ids, 1).sum(-1)
                loss = -(signs * logp).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step in (1, steps):
                    row[f"step{step}"] = fraction_changed(model, start)
                    if setup == "fp32-master":
                        row[f"step{step}_low_view"] = fraction_changed(model, start, LOW)
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def completions(model, tok, n: int, length: int, seed: int):
    """``(ids [n, P + length], P)``: ``n`` sampled completions of exactly ``length`` tokens of one prompt."""
    prompt = "Compute step by step, explaining every step: 37 + 48 - 15 + 92 - 61 + 24 ="
    if tok.chat_template:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    enc = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template).to(DEVICE)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_new_tokens=length,
            max_new_tokens=length,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    return out, enc["input_ids"].shape[1]


_ACCELERATOR = []


def _bf16_accelerator():
    """One accelerate ``Accelerator`` with bf16 mixed precision (its state is a process-wide singleton)."""
    if not _ACCELERATOR:
        from accelerate import Accelerator

        _ACCELERATOR.append(Accelerator(mixed_precision="bf16", cpu=DEVICE == "cpu"))
    return _ACCELERATOR[0]


def fused_logp(model, ids: torch.Tensor, start: int, mode: str) -> torch.Tensor:
    """Per-token log-probs ``[N, T - start]`` through TRL's fused LM head, as the trainer computes them in ``mode``."""
    from trl.trainer.utils import add_fused_lm_head

    m = copy.deepcopy(model)
    if mode in ("bf16-pure", "fp16-pure"):
        m.to(LOW if mode == "bf16-pure" else torch.float16)
    if mode == "fp64":
        m.to(torch.float64)
        return seq_logp_plain(m, ids, start)  # TRL's statistics are fp32; the reference is a plain fp64 forward
    add_fused_lm_head(m, cast_lm_head_to_fp32=mode in ("autocast+fp32-head", "fp16-autocast+fp32-head", "fp32-passes"))
    labels = ids.clone()
    labels[:, :start] = -100
    if mode == "fp32-passes":  # the trainer's path: accelerate's bf16 wrapper, TRL's accelerator.autocast()
        from apo.integrations.trl.precision import fp32_forward

        accelerator = _bf16_accelerator()
        m = accelerator.prepare_model(m)
        with torch.no_grad(), fp32_forward(m, accelerator), accelerator.autocast():
            out = m(input_ids=ids, labels=labels, fused_lm_head=True)
        return out.log_probs[:, start - 1 :].double()
    autocast = mode in ("autocast", "autocast+fp32-head", "fp16-autocast+fp32-head")
    dtype = torch.float16 if mode.startswith("fp16") else LOW
    with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype, enabled=autocast):
        out = m(input_ids=ids, labels=labels, fused_lm_head=True)
    return out.log_probs[:, start - 1 :].double()


MODES = (
    "bf16-pure",
    "autocast",
    "autocast+fp32-head",
    "fp16-pure",
    "fp16-autocast+fp32-head",
    "fp32-passes",
    "fp32",
)


def anchor_table(model0, tok, n: int, length: int, ks: list[int], lr: float, update_from: str) -> list[dict]:
    """Table 2 (see the module docstring). ``update_from="same"``: the steps are taken on the measured completions
    (the largest |u| a step can make); ``"other"``: on ``n`` other completions of the same prompt, so the measured
    ones move only as much as a step on a batch that does not contain them moves them (as in training, where a
    completion is one of many)."""
    all_ids, start = completions(model0, tok, 2 * n if update_from == "other" else n, length, seed=0)
    ids, train_ids = (all_ids[:n], all_ids[n:]) if update_from == "other" else (all_ids, all_ids)
    print(f"# {n} completions of {ids.shape[1] - start} tokens after a {start}-token prompt", flush=True)
    model = copy.deepcopy(model0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    signs = torch.tensor([1.0, -1.0] * (n // 2), device=DEVICE)
    base = {mode: fused_logp(model0, ids, start, mode) for mode in (*MODES, "fp64")}
    rows, done = [], 0
    for k in ks:
        while done < k:
            loss = -(signs * seq_logp_plain(model, train_ids, start).sum(-1)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
        now = {mode: fused_logp(model, ids, start, mode) for mode in (*MODES, "fp64")}
        ref_tok = now["fp64"] - base["fp64"]  # [N, T] per-token log-ratios
        ref_u = ref_tok.sum(-1) / TAU
        ref_g = ref_tok.mean(-1)
        for mode in MODES:
            tok_lr = now[mode] - base[mode]
            u, g = tok_lr.sum(-1) / TAU, tok_lr.mean(-1)
            row = {
                "k": k,
                "mode": mode,
                "mean_abs_u": float(ref_u.abs().mean()),
                "u_rel_err": float((u - ref_u).abs().mean() / ref_u.abs().mean()),
                "u_abs_err": float((u - ref_u).abs().mean()),
                "gspo_rel_err": float((g - ref_g).abs().mean() / ref_g.abs().mean()),
                "grpo_token_rel_err": float((tok_lr - ref_tok).abs().mean() / ref_tok.abs().mean()),
                "logp_abs_err_per_seq": float((now[mode] - now["fp64"]).sum(-1).abs().mean()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def cost_step(model, ids, start: int, fp32_head: bool, autocast: bool = True) -> float:
    """Seconds of one forward + backward of the fused log-prob path under bf16 autocast (``autocast=False``: fp32)."""
    labels = ids.clone()
    labels[:, :start] = -100
    t0 = time.perf_counter()
    with torch.autocast(DEVICE, dtype=LOW, enabled=autocast):
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    model.zero_grad(set_to_none=True)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def cost_models(model0):
    from trl.trainer.utils import add_fused_lm_head

    models = {}
    for head in (False, True):
        m = copy.deepcopy(model0)
        add_fused_lm_head(m, cast_lm_head_to_fp32=head)
        models[head] = m
    return models


def cost_table(model0, n: int, length: int, repeats: int, model_name: str) -> dict:
    """Table 3 (see the module docstring)."""
    vocab = model0.config.vocab_size
    ids = torch.randint(0, vocab, (n, length + 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    models = cost_models(model0)
    for head in (False, True):  # warm-up
        cost_step(models[head], ids, 16, head)
    times = {False: [], True: []}
    ratios = []
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        pair = {h: cost_step(models[h], ids, 16, h) for h in order}
        for h in pair:
            times[h].append(pair[h])
        ratios.append(pair[True] / pair[False])
    peak = {}
    for head in (False, True):
        cmd = [sys.executable, __file__, "--model", model_name, "--peak-rss", str(int(head)), "--n", str(n)]
        cmd += ["--length", str(length), "--device", DEVICE, "--low-dtype", "fp16" if LOW == torch.float16 else "bf16"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peak[head] = json.loads(out.splitlines()[-1])
    row = {
        "shape": f"{n} x {length} tokens, vocab {vocab}",
        "median_s_bf16_head": statistics.median(times[False]),
        "median_s_fp32_head": statistics.median(times[True]),
        "median_paired_ratio": statistics.median(ratios),
        "peak_rss_mb_bf16_head": peak[False]["peak_rss_mb"],
        "peak_rss_mb_fp32_head": peak[True]["peak_rss_mb"],
        "rss_after_load_mb": peak[False]["rss_after_load_mb"],
    }
    print(json.dumps(row), flush=True)
    return row


def passes_table(model0, n: int, length: int, repeats: int) -> dict:
    """Table 4 (see the module docstring): bf16 autocast + fp32 head against fp32 passes, alternated."""
    vocab = model0.config.vocab_size
    ids = torch.randint(0, vocab, (n, length + 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    model = cost_models(model0)[True]  # the fp32 head in both: what the trainer has under bf16
    for autocast in (True, False):  # warm-up
        cost_step(model, ids, 16, True, autocast)
    times = {True: [], False: []}
    for r in range(repeats):
        for autocast in (True, False) if r % 2 == 0 else (False, True):
            times[autocast].append(cost_step(model, ids, 16, True, autocast))
    ratios = [f / b for f, b in zip(times[False], times[True], strict=True)]
    row = {
        "shape": f"{n} x {length} tokens, vocab {vocab}",
        "median_s_bf16_autocast": statistics.median(times[True]),
        "median_s_fp32_passes": statistics.median(times[False]),
        "median_paired_ratio_fp32_over_bf16": statistics.median(ratios),
    }
    print(json.dumps(row), flush=True)
    return row


def peak_rss(model_name: str, head: bool, n: int, length: int) -> None:
    model, _ = load(model_name)
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, cast_lm_head_to_fp32=head)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (n, length + 16), generator=gen).to(DEVICE)
    if DEVICE == "cuda":
        after_load = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    cost_step(model, ids, 16, head)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20  # GPU memory, not RSS
    print(json.dumps({"peak_rss_mb": round(peak), "rss_after_load_mb": round(after_load)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-arith", help="tiny-arith | smollm2 | a folder")
    p.add_argument("--tables", default="weights,anchor,cost")
    p.add_argument("--quick", action="store_true", help="weights: lr 1.5e-5 only; anchor: k = 1 only")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps of the weights table")
    p.add_argument("--lr", type=float, default=1.5e-5, help="learning rate of the anchor table")
    p.add_argument("--ks", default="1,2,4", help="optimizer steps after the rollout (anchor table)")
    p.add_argument("--n", type=int, default=8, help="completions (anchor) / sequences (cost)")
    p.add_argument("--update-from", default="same", choices=("same", "other"), help="anchor: the steps' batch")
    p.add_argument("--length", type=int, default=256, help="completion tokens (anchor, cost)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step of the weights table")
    p.add_argument("--batch-length", type=int, default=32, help="tokens per sequence of the weights table")
    p.add_argument("--repeats", type=int, default=6, help="timed pairs of the cost table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--low-dtype", default="bf16", choices=("bf16", "fp16"), help="the low-precision dtype")
    p.add_argument("--peak-rss", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    global DEVICE, LOW
    DEVICE, LOW = a.device, {"bf16": torch.bfloat16, "fp16": torch.float16}[a.low_dtype]
    torch.set_num_threads(a.threads)
    if a.peak_rss is not None:
        return peak_rss(a.model, bool(a.peak_rss), a.n, a.length)
    model, tok = load(a.model)
    tables = a.tables.split(",")
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"# {a.model}: {size:.1f}M parameters, torch {torch.__version__}")
    if "weights" in tables:
        lrs = [1.5e-5] if a.quick else [1e-6, 5e-6, 1.5e-5, 1e-4]
        print(f"## weights changed after 1 and {a.steps} AdamW steps")
        weights_table(model, a.steps, lrs, a.batch, a.batch_length)
    if "anchor" in tables:
        ks = [1] if a.quick else [int(k) for k in a.ks.split(",")]
        print(f"## anchor error vs fp64, lr {a.lr}, tau {TAU}")
        anchor_table(model, tok, a.n, a.length, ks, a.lr, a.update_from)
    if "passes" in tables:
        print("## cost of fp32 log-prob passes against bf16 autocast (fp32 head in both; forward + backward)")
        passes_table(model, a.n, a.length, a.repeats)
    if "cost" in tables:
        print("## cost of the fp32 LM head (bf16 autocast, forward + backward of the fused log-prob path)")
        cost_table(model, a.n, a.length, a.repeats, a.model)


if __name__ == "__main__":
    main()
