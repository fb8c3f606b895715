"""Low-precision numerics on CPU: a bf16 run moves its weights, the anchor is signal, bad precision settings fail.

Numbers and their derivation: docs/numerics.md (``benchmarks/numerics.py`` prints the tables).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apo.cli.main import main
from apo.integrations.trl.precision import half_ulp, lost_update_warning

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
