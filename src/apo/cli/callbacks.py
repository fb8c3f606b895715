"""What an ``apo train`` run watches while it trains, as Trainer callbacks: a line of ``metrics.jsonl`` per logged
step (:class:`MetricsJsonl`), the progress bar (:class:`Progress`), a stop at the step boundary after a signal
(:class:`StopOnSignal`), and a stop once the reward failed on every completion (:class:`StopWithoutReward`, with the
counts behind it, :func:`reward_counts` and :func:`no_reward_reason`).

Imports transformers: :mod:`apo.cli.run` imports this module once the model is loaded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from apo.cli import ranks


def saves_checkpoints(args) -> bool:
    """Whether the run saves checkpoints (``save_strategy`` is not ``no``)."""
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    return str(strategy) != "no"


class StopOnSignal(TrainerCallback):
    """After a first SIGINT / SIGTERM (``stopped()``: on any rank, asked of every rank at each step end): end
    training at this optimizer step, saving a checkpoint (unless ``save_strategy`` is ``no``); the step's metrics
    are logged as usual."""

    def __init__(self, stopped=None):
        self.stopped = stopped

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped is not None and self.stopped():
            control.should_training_stop = True
            control.should_save = saves_checkpoints(args)


class MetricsJsonl(TrainerCallback):
    """Appends one JSON line per logged optimizer step to ``run_dir/metrics.jsonl`` (flushed and fsynced), with the
    run's ``wall_time_s()``."""

    def __init__(self, run_dir: Path, wall_time_s):
        self.run_dir, self.wall_time_s = run_dir, wall_time_s

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs and "reward" not in logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), "wall_time_s": self.wall_time_s()}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


class Progress(TrainerCallback):
    """A progress bar with step, reward and alpha (replaces the Trainer's own); rank 0 only."""

    def __init__(self, max_steps: int):
        self.max_steps, self.bar = max_steps, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps or self.max_steps,
                initial=state.global_step,
                desc="apo train",
                dynamic_ncols=True,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.n = state.global_step
            post = {k.split("/")[-1]: f"{logs[k]:.3f}" for k in ("reward", "apo/alpha", "loss") if k in logs}
            self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.n = state.global_step
            self.bar.close()


def reward_counts(reward_fn) -> tuple[int, int]:
    """``(failed, scored)``: the completions the reward failed on and scored so far, summed over the ranks (each
    rank scores its own; every rank calls this at the same points)."""
    return ranks.sum_over_ranks((getattr(reward_fn, "n_failed", 0), getattr(reward_fn, "n_scored", 0)))


def no_reward_reason(reward_fn, counts: tuple[int, int], where: str) -> str | None:
    """The reason to stop when the reward failed (raised, timed out, returned None/NaN) on every completion scored
    since ``counts`` (:func:`reward_counts`), else ``None``."""
    failed, scored = (a - b for a, b in zip(reward_counts(reward_fn), counts, strict=True))
    if scored == 0 or failed < scored:
        return None
    name = getattr(reward_fn, "__name__", "reward")
    return f"reward {name} failed on every one of the {scored} completions of {where} ({reward_fn.last_failure})"


class StopWithoutReward(TrainerCallback):
    """Stop training once every completion scored since training started has failed (raised, timed out, returned
    None/NaN) over at least ``min_steps`` optimizer steps (``reason`` says why; a run shorter than that is judged at
    its end by :meth:`check`). A failure of some calls only (a batch that timed out) is counted in
    :meth:`failed_frac` and training goes on."""

    def __init__(self, reward_fn, min_steps: int = 2):
        self.reward_fn, self.min_steps, self.reason = reward_fn, min_steps, None
        self.start = reward_counts(reward_fn)
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps >= self.min_steps and self.check(f"the first {self.steps} steps") is not None:
            control.should_training_stop = True
            control.should_save = False

    def check(self, where: str) -> str | None:
        """Set and return ``reason`` if every completion scored since the start failed (``where``: which steps)."""
        self.reason = self.reason or no_reward_reason(self.reward_fn, self.start, where)
        return self.reason

    def failed_frac(self) -> float:
        failed, scored = (a - b for a, b in zip(reward_counts(self.reward_fn), self.start, strict=True))
        return failed / scored if scored else 0.0


def run_callbacks(run_dir: Path, max_steps: int, wall_time_s, stopped=None) -> list[TrainerCallback]:
    """The callbacks of a run, in the order they act: ``metrics.jsonl``, the progress bar, the stop on a signal."""
    return [MetricsJsonl(run_dir, wall_time_s), Progress(max_steps), StopOnSignal(stopped)]
