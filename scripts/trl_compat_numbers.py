"""How far ``APOTrainer(algorithm="grpo")`` is from TRL's ``GRPOTrainer`` on the same tiny Llama, data and seed: the
largest relative weight difference ``max |w_apo - w_trl| / max |w_trl|`` over all tensors after the run, and the
largest relative loss difference over the logged steps, for the settings of ``tests/test_trl_compat.py``.
Usage: python scripts/trl_compat_numbers.py"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import torch  # noqa: E402
from test_trl_compat import run, step_logs  # noqa: E402

from apo.integrations.trl import trainer as apo_trainer_module  # noqa: E402

SETTINGS = {
    "on-policy, TRL's default loss (dapo), 3 steps": ({}, {"loss_type": "dapo"}),
    "on-policy, loss_type=grpo, 3 steps": ({"loss_type": "grpo"}, {}),
    "num_iterations=2, 4 steps": ({"loss_type": "grpo", "num_iterations": 2, "max_steps": 4},) * 2,
    "steps_per_generation=2, 4 steps": (
        {"loss_type": "grpo", "steps_per_generation": 2, "per_device_train_batch_size": 4, "max_steps": 4},
    )
    * 2,
}


def differences(trl, ours) -> tuple[float, float]:
    w_trl, w_apo = trl.model.state_dict(), ours.model.state_dict()
    weight = max(float((w_apo[k] - w).abs().max() / w.abs().max().clamp(min=1e-30)) for k, w in w_trl.items())
    losses = [(a["loss"], b["loss"]) for a, b in zip(step_logs(trl), step_logs(ours), strict=True) if "loss" in a]
    loss = max(abs(b - a) / max(abs(a), 1e-30) for a, b in losses)
    return weight, loss


def main() -> None:
    torch.set_num_threads(1)
    from trl.trainer.utils import shuffle_sequence_dict

    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (trl_kw, apo_kw)) in enumerate(SETTINGS.items()):
            trl, _ = run("trl", Path(tmp) / f"{i}", **trl_kw)
            ours, _ = run("apo", Path(tmp) / f"{i}", **apo_kw)
            weight, loss = differences(trl, ours)
            print(f"{name}: weights {weight:.1e}, loss {loss:.1e}")
            if "steps_per_generation" in name:  # the same with TRL's row-wise shuffle in place of whole groups
                whole_groups = apo_trainer_module.shuffle_whole_groups

                def row_wise(batch, group_size, hint=""):
                    return shuffle_sequence_dict(batch)

                apo_trainer_module.shuffle_whole_groups = row_wise
                try:
                    ours, _ = run("apo", Path(tmp) / f"{i}-rows", **apo_kw)
                finally:
                    apo_trainer_module.shuffle_whole_groups = whole_groups
                weight, loss = differences(trl, ours)
                print(f"{name}, row-wise shuffle: weights {weight:.1e}, loss {loss:.1e}")


if __name__ == "__main__":
    main()
