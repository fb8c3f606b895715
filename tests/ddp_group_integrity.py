"""Run by ``tests/test_trainer_distributed.py`` under ``torchrun --nproc_per_node 2`` (CPU, gloo).

Trains APO for 4 optimizer steps with mini-batches, 2 epochs per rollout and gradient accumulation, and asserts at
every loss call, on every process: whole groups of one prompt each, no group id present on two processes, old
log-probs present, and the same alpha on every process. Writes ``rank<r>.json`` into ``$APO_TEST_RESULTS`` at the end.
``APO_TEST_SCHEDULE=ess`` uses the ESS schedule (alpha from the whole rollout at its first step), else the guarded
schedule with the token confidence (alpha from each step's first micro-batch).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import FAST_DEFAULTS, build_char_tokenizer, build_tiny_llama, hash_reward, prompt_dataset  # noqa: E402

import apo  # noqa: E402
from apo.cli import ranks  # noqa: E402


class CheckedTrainer(apo.APOTrainer):
    def _compute_loss(self, model, inputs):
        G = self.num_generations
        ids = inputs["group_ids"]
        _, counts = torch.unique(ids, return_counts=True)
        assert bool((counts == G).all()), f"broken local groups: {ids.tolist()}"
        for gid in ids.unique():
            rows = inputs["prompt_ids"][ids == gid]
            assert bool((rows == rows[0]).all()), "a group mixes prompts"
        all_ids = self.accelerator.gather(ids)
        _, all_counts = torch.unique(all_ids, return_counts=True)
        assert bool((all_counts == G).all()), f"a group id appears on two processes: {all_ids.tolist()}"
        assert "old_per_token_logps" in inputs, "pi_old missing although the policy moves within a rollout"
        loss = super()._compute_loss(model, inputs)
        alpha = torch.tensor([self.alpha_schedule.alpha], dtype=torch.float64)
        alphas = self.accelerator.gather(alpha)
        assert bool((alphas == alphas[0]).all()), f"processes disagree on alpha: {alphas.tolist()}"
        self.checked = getattr(self, "checked", 0) + 1
        return loss

    def _advance_alpha_at_rollout(self, rewards_BG):
        self.rollout_groups = [*getattr(self, "rollout_groups", []), int(rewards_BG.shape[0])]
        return super()._advance_alpha_at_rollout(rewards_BG)


def main() -> None:
    torch.set_num_threads(1)
    tokenizer = build_char_tokenizer()
    out = os.environ.get("APO_TEST_OUT") or tempfile.mkdtemp()
    args = apo.APOConfig(
        **{
            **FAST_DEFAULTS,
            "output_dir": out,
            "num_generations": 2,
            "per_device_train_batch_size": 4,
            "steps_per_generation": 2,
            "num_iterations": 2,
            "gradient_accumulation_steps": 2,
            "max_steps": 4,
            **(
                {"alpha_schedule": "ess"}
                if os.environ.get("APO_TEST_SCHEDULE") == "ess"
                else {"alpha_schedule": "guarded", "confidence_source": "token"}
            ),
        }
    )
    trainer = CheckedTrainer(
        model=build_tiny_llama(tokenizer, init_std=0.5),
        reward_funcs=hash_reward,
        args=args,
        train_dataset=prompt_dataset(32),
        processing_class=tokenizer,
    )
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    if trainer.alpha_schedule.name == "guarded":
        # one earlier step at mean reward 0 sets the baseline to 0 (the first step of a run is never a gain,
        # b_0 = R_1), so the positive rewards of training are a gain and alpha moves off alpha_max
        trainer.alpha_schedule.step(0.0, 1.0)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "checked": trainer.checked,
        "alphas": [h["apo/alpha"] for h in logs],
        "u_abs_max": [h["apo/u_abs_max"] for h in logs],
        "rollout_groups": getattr(trainer, "rollout_groups", []),
    }
    assert trainer.checked == 8, trainer.checked
    # Each rank writes its own file: two processes printing to one pipe can interleave their lines.
    rank = trainer.accelerator.process_index
    with open(os.path.join(os.environ["APO_TEST_RESULTS"], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    print(f"RANK {rank} OK", flush=True)


if __name__ == "__main__":
    main()
    # not the interpreter's teardown, during which a gloo worker that still holds a finished gather can abort the
    # process (apo.cli.ranks.leave says why)
    ranks.leave(0)
