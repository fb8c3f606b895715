"""Low-precision numerics on CPU: a bf16 run moves its weights, the anchor is signal, bad precision settings fail.

Numbers and their derivation: docs/numerics.md (``benchmarks/numerics.py`` prints the tables).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apo.cli.main import main

TINY = Path(__file__).resolve().parent.parent / "src" / "apo" / "assets" / "tiny-arith" / "model.safetensors"
FAST = ["eval_before_after=false", "save_strategy=no", "per_device_train_batch_size=16", "torch_threads=1"]


def _changed(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], view=None) -> float:
    changed = total = 0
    for name, w0 in start.items():
        w1 = end[name]
        if view is not None:
            w0, w1 = w0.to(view), w1.to(view)
        changed += int((w0.float() != w1.float()).sum())
        total += w0.numel()
    return changed / total


def test_bf16_run_at_the_paper_lr_trains_every_weight_on_cpu(tmp_path):
    """``apo train bf16=true learning_rate=1.5e-5``, 20 steps: the final weights are fp32 master weights of which
    >= 90% moved (with bf16 weights and no master copy: 13%, stuck from step 2 on), and their bf16 rounding, which
    autocast's matmuls compute with, moved for well over that 13% (75% measured; it keeps growing with steps)."""
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=20", "bf16=true", "learning_rate=1.5e-5", *FAST]
    assert main(args) == 0
    start, end = load_file(str(TINY)), load_file(str(run / "final" / "model.safetensors"))
    assert {w.dtype for w in end.values()} == {torch.float32}
    assert _changed(start, end) >= 0.9
    assert _changed(start, end, torch.bfloat16) >= 0.5


def test_master_weights_false_trains_bf16_weights_with_kahan_sums_on_cpu(tmp_path):
    """``master_weights=false``: bf16 weights trained by torch-optimi's Kahan-summed AdamW move like the bf16 view of
    fp32 master weights (65% after 20 steps in benchmarks/numerics.py; plain AdamW on bf16 weights: 13%)."""
    pytest.importorskip("optimi")
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=20", "bf16=true", "master_weights=false"]
    assert main([*args, "learning_rate=1.5e-5", *FAST]) == 0
    start, end = load_file(str(TINY)), load_file(str(run / "final" / "model.safetensors"))
    # The LM head (tied to the embedding here) is fp32: apo under bf16 casts it (cast_lm_head_to_fp32's default).
    assert {n for n, w in end.items() if w.dtype != torch.bfloat16} == {"model.embed_tokens.weight"}
    assert _changed(start, end, torch.bfloat16) >= 0.5


def test_kahan_adamw_decays_weights_not_biases_or_norms(tokenizer):
    """The Trainer's rule for weight decay (``get_decay_parameter_names``): matrices decay, norm weights do not."""
    pytest.importorskip("optimi")
    from conftest import build_tiny_llama

    from apo.integrations.trl.precision import kahan_adamw

    model = build_tiny_llama(tokenizer).to(torch.bfloat16)
    opt = kahan_adamw(model, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert set(by_decay) == {0.5, 0.0}
    assert by_decay[0.0] and all("norm" in n for n in by_decay[0.0])
    assert any(n.endswith("q_proj.weight") for n in by_decay[0.5])
    assert not any("norm" in n for n in by_decay[0.5])
    assert by_decay[0.0] | by_decay[0.5] == {n for n, p in model.named_parameters() if p.requires_grad}
    # with no gradient signal, a decayed weight shrinks and a norm weight does not (lr * wd = 5e-3 per step)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    norm = next(p for n, p in model.named_parameters() if n in by_decay[0.0])
    proj = next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight"))
    norm0, proj0 = norm.detach().float().clone(), proj.detach().float().clone()
    for _ in range(20):
        opt.step()
    assert torch.equal(norm.detach().float(), norm0)
    assert proj.detach().float().abs().sum() < proj0.abs().sum() * 0.95  # 0.995^20 = 0.905 in exact arithmetic
    # torch-optimi decays outside its Kahan sum: lr * wd below half a bf16 ulp would never move a weight
    with pytest.raises(ValueError, match=r"weight_decay=0.1 with master_weights=false.*no weight would ever decay"):
        kahan_adamw(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


def test_weight_decay_rounded_away_is_one_line_naming_the_keys(tmp_path, capsys):
    pytest.importorskip("optimi")
    args = ["train", f"output_dir={tmp_path / 'run'}", "max_steps=1", "bf16=true", "master_weights=false"]
    assert main([*args, "weight_decay=0.01", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weight_decay=0.01 with master_weights=false" in err[0] and "weight_decay=0" in err[0]
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["fp16=true"], "fp16=true: this machine has no fp16 mixed precision"),
        (["bf16=true", "fp16=true"], "fp16 and bf16"),
        (["master_weights=false"], "master_weights=false only applies with bf16=true or fp16=true"),
    ],
)
def test_precision_errors_are_one_line_naming_the_keys(override, message, tmp_path, capsys):
    assert main(["train", f"output_dir={tmp_path / 'run'}", "max_steps=1", *override, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_half_ulp_of_bf16_and_the_lost_update_warning(tokenizer):
    from conftest import build_tiny_llama

    from apo.integrations.trl.precision import half_ulp, lost_update_warning

    # bf16 keeps 7 mantissa bits: in [2^-6, 2^-5) the spacing is 2^-13, half of it 2^-14.
    assert half_ulp(torch.tensor([0.02, -0.02, 0.0]), torch.bfloat16).tolist() == [2.0**-14, 2.0**-14, 0.0]
    assert half_ulp(torch.tensor([1.0]), torch.float32).item() == 2.0**-24
    model = build_tiny_llama(tokenizer)  # init std 0.02: median |w| ~ 0.013, half a bf16 ulp ~ 3e-5
    assert lost_update_warning(model, 1.5e-5) is None  # fp32 weights
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    line = lost_update_warning(bf16, 1.5e-5)
    assert line is not None and "\n" not in line and "learning_rate=1.5e-05" in line and "bfloat16" in line
    assert lost_update_warning(bf16, 1e-2) is None  # a step well above half an ulp
    optimi = pytest.importorskip("optimi")
    assert lost_update_warning(bf16, 1.5e-5, optimi.AdamW(bf16.parameters(), lr=1.5e-5, kahan_sum=True)) is None


def _run_logp(model, ids: torch.Tensor, start: int, *, autocast: bool, fp32_head: bool) -> torch.Tensor:
    """``[N, T - start]`` per-token log-probs as the trainer computes them: TRL's fused LM head (fp32 when
    ``fp32_head``), under bf16 autocast when ``autocast``."""
    from trl.trainer.utils import add_fused_lm_head

    m = copy.deepcopy(model)
    add_fused_lm_head(m, cast_lm_head_to_fp32=fp32_head)
    labels = ids.clone()
    labels[:, :start] = -100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return m(input_ids=ids, labels=labels, fused_lm_head=True).log_probs[:, start - 1 :].double()


def _fp64_logp(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    m = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        logits = m(input_ids=ids).logits[:, start - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, ids[:, start:].unsqueeze(-1))[..., 0]


def test_anchor_error_of_a_bf16_run_one_step_off_policy_on_cpu(tmp_path):
    """u = (l_theta - l_old) / tau of 8 sampled completions of 48 tokens, one AdamW step (lr 1.5e-5) after the
    rollout, computed the way a ``bf16=true`` apo run computes it (its weights from ``load_policy``, TRL's fused
    LM head with the config's ``cast_lm_head_to_fp32``, bf16 autocast), against an fp64 forward of the same weights:
    mean |error| <= 10% of mean |u| (measured 7.2% of |u| = 4.1; with bf16 weights and bf16 logits, as before:
    14.3% of |u| = 0.46, the step being mostly rounded away). A 19-token vocabulary and a 1M-parameter model: on
    SmolLM2 the floor of bf16 compute is far higher (docs/numerics.md)."""
    from apo.cli.config import resolve
    from apo.cli.inputs import load_policy

    cfg = resolve(None, {"bf16": True, "learning_rate": 1.5e-5, "output_dir": str(tmp_path / "run")})
    model, tok = load_policy(cfg)
    torch.manual_seed(0)
    enc = tok(["12+34=", "56+7=", "8+90=", "21+43="], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        ids = copy.deepcopy(model).float().generate(**enc, do_sample=True, min_new_tokens=48, max_new_tokens=48)
    ids, start = ids.repeat(2, 1), enc["input_ids"].shape[1]
    signs = torch.tensor([1.0, -1.0] * 4)
    autocast, fp32_head = bool(cfg.bf16), bool(cfg.cast_lm_head_to_fp32)
    old = _run_logp(model, ids, start, autocast=autocast, fp32_head=fp32_head)
    old_ref = _fp64_logp(model, ids, start)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)  # the Trainer's optimizer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits[:, start - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, start:].unsqueeze(-1))[..., 0].sum(-1)
    (-(signs * logp).mean()).backward()
    opt.step()
    u = (_run_logp(model, ids, start, autocast=autocast, fp32_head=fp32_head) - old).sum(-1) / cfg.tau_anchor
    u_ref = (_fp64_logp(model, ids, start) - old_ref).sum(-1) / cfg.tau_anchor
    mean_u, err = float(u_ref.abs().mean()), float((u - u_ref).abs().mean())
    print(f"mean |u| {mean_u:.4f}, mean |error| {err:.4f} ({err / mean_u:.1%})")
    assert mean_u > 0.05  # the policy moved
    assert err <= 0.10 * mean_u


def test_a_bf16_checkpoint_written_without_master_weights_still_resumes_on_cpu(tmp_path, caplog):
    """A checkpoint as runs wrote them before master weights (bf16 weights and AdamW states) resumes: one warning
    line, the run continues with fp32 master weights."""
    from safetensors.torch import save_file

    from apo.integrations.trl.checkpoints import write_manifest

    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=2", "save_steps=1", "bf16=true", "learning_rate=1.5e-5"]
    args += ["eval_before_after=false", "per_device_train_batch_size=16", "torch_threads=1"]
    assert main(args) == 0
    for name in ("summary.json", "final", "checkpoint-2"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    ckpt = run / "checkpoint-1"
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(ckpt / "model.safetensors"))
    opt = torch.load(ckpt / "optimizer.pt", weights_only=False)
    for state in opt["state"].values():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value):
                state[key] = value.to(torch.bfloat16)
    torch.save(opt, ckpt / "optimizer.pt")
    write_manifest(ckpt, 1)
    caplog.set_level("WARNING", logger="apo")
    assert main([*args, "--resume"]) == 0
    notes = [r.getMessage() for r in caplog.records if "holds bf16 weights" in r.getMessage()]
    assert len(notes) == 1 and "checkpoint-1" in notes[0]
    final = load_file(str(run / "final" / "model.safetensors"))
    assert {w.dtype for w in final.values()} == {torch.float32}
    assert (run / "summary.json").is_file()


def test_offpolicy_apo_in_bf16_warns_that_the_anchor_is_rounding(make_trainer, caplog):
    caplog.set_level("WARNING", logger="apo")
    make_trainer(bf16=True, updates_per_rollout=2, fp32_anchor_passes=False)
    lines = [r.getMessage() for r in caplog.records if "the anchor u is mostly bf16 rounding" in r.getMessage()]
    assert len(lines) == 1 and "2 optimizer steps per rollout" in lines[0]
    caplog.clear()
    make_trainer(bf16=True, updates_per_rollout=2)  # the default: fp32 log-prob passes
    make_trainer(bf16=True)  # on-policy: u = 0 exactly
    make_trainer(updates_per_rollout=2)  # fp32
    assert not [r for r in caplog.records if "mostly bf16 rounding" in r.getMessage()]


def test_continuous_batching_under_bf16_is_refused_as_it_would_drop_the_master_weights(tmp_path):
    """TRL 1.16's continuous-batching generation casts the model to bf16 in place and never back."""
    import apo

    with pytest.raises(ValueError, match="use_transformers_continuous_batching=True with bf16/fp16") as err:
        apo.APOConfig(str(tmp_path), bf16=True, use_cpu=True, use_transformers_continuous_batching=True)
    assert "\n" not in str(err.value)
    cfg = apo.APOConfig(str(tmp_path), bf16=False, use_cpu=True, use_transformers_continuous_batching=True)
    assert cfg.use_transformers_continuous_batching  # fp32 throughout: nothing to lose
