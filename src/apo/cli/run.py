"""`apo train` and `apo eval`: a run folder from a config, and the held-out reward of a policy.

``apo train`` is a recipe of named steps, each on every process of a launch (:mod:`apo.cli.ranks`; rank 0 alone
writes the folder and speaks), each a function here:

1. :func:`train` opens the run folder (:meth:`apo.cli.run_folder.RunFolder.open`: checks, or what to resume from);
2. :func:`_load` loads the inputs (:mod:`apo.cli.inputs`) and checks that they make one optimizer step;
3. :func:`_start` writes ``config.yaml`` of a fresh run (:meth:`~apo.cli.run_folder.RunFolder.start`);
4. :func:`_prepare` evaluates the starting policy (``eval_before.json``) and builds the trainer;
5. :func:`_fit` trains, or only loads a checkpoint that holds the last step;
6. :func:`_finalize` judges the run, writes ``final/``, evaluates the trained policy and writes the summary.

What the run folder holds: :mod:`apo.cli.run_folder`. What a run guarantees:

- Fresh start: the inputs (reward, model, data) are loaded before the run directory is created; a start that
  fails before its first step (loading, building the trainer, creating its optimizer or scheduler) removes what
  it wrote (``config.yaml``, ``eval_before.json``, the folder if it made it), so the corrected command runs
  without clean-up by hand; a setting refused there is one line (:func:`failing_start`).
- ``resume``: the saved config must match. A finished run (``summary.json`` present) is left exactly as it is.
  Otherwise training continues from the newest checkpoint that matches its manifest (newer, damaged ones are
  named in a warning and passed over); ``metrics.jsonl`` lines past that checkpoint are dropped, so no step is
  counted twice. A run whose newest checkpoint is its last step is only finalised (``final/``, evaluation,
  summary): no step is trained again. A checkpoint written by another number of processes is refused (the
  global batch, the sampler's order and each process's random state depend on it).
- Signals: the first SIGINT / SIGTERM stops training at the end of the current optimizer step, after a
  checkpoint (unless ``save_strategy`` is ``no``), and raises :class:`apo.cli.process.RunStopped` whose message
  is the command that resumes (exit status 128 + signal number); a second signal ends the process at once. A
  signal that comes while a trained run draws ``curves.png`` and writes ``summary.json`` (about a second) lets
  it finish.
- Several processes (``torchrun``, ``accelerate launch``; :mod:`apo.cli.ranks`): every rank loads the inputs,
  evaluates its share of the held-out batches and trains; rank 0 alone takes the lock and writes the run folder.
  A signal on any rank stops every rank at the same step; a failure on one rank ends the others.
- ``output_dir`` an existing folder with other files and no run: refused unless ``into_existing``
  (:func:`apo.cli.run_folder.refuse_foreign`), since a run replaces ``final/``, ``curves.png``, ``summary.json``...
- One command per ``output_dir`` (:mod:`apo.cli.lock`); the reward worker and grader processes are closed when
  the run ends, however it ends.
- A training set too small for one optimizer step is refused before any work. A run whose reward failed on every
  completion (of the evaluation before training, of its first 2 steps, or of a shorter run) raises
  :class:`RunFailed`; once training started it first writes ``summary.json`` with ``failed`` (the reason) and
  no final model. ``summary.json`` of every trained run gives ``reward_failed_frac``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

from apo.cli import config as cfglib
from apo.cli import ranks
from apo.cli.inputs import load_run_inputs, loading_inputs
from apo.cli.lock import RunDirBusy
from apo.cli.process import RunStopped, StopSignals
from apo.cli.run_folder import RunFolder, checkpoint_state, resume_command
from apo.tasks.evaluate import coverage_summary, evaluate, reward_gain

logger = logging.getLogger("apo")


class RunFailed(RuntimeError):
    """A run that ran but produced nothing to trust (no completion could be scored); the message says why and where
    the run marks it (``summary.json``'s ``failed``). Exit status 1."""


def train(values: dict[str, Any], *, resume: bool = False, into_existing: bool = False) -> Path:
    """Run ``apo train`` for validated config ``values`` (:func:`apo.cli.config.resolve_values`); returns the run
    directory. ``resume``: continue the run saved there; ``into_existing``: write the run into a folder that holds
    other files. The module docstring says what a run guarantees.

    Raises:
        ConfigError: a bad config or input, a run already in ``output_dir`` (without ``resume``) or one running
            there now (the holder's pid), a folder that is not a run (without ``into_existing``), nothing, a failed
            run or a different config to resume.
        RunFailed: the reward failed on every completion.
        RunStopped: stopped by a signal.
        PeerFailed: another process of the launch failed (it said why).
    """
    from apo.tasks.bounded import close_children

    cfg = cfglib.build(values)  # with a launcher, this starts the process group (TrainingArguments)
    _note_fsdp_on_cpu(cfg)
    folder = RunFolder(cfg.output_dir)
    command = resume_command(folder.path).replace("{", "{{").replace("}", "}}")  # literal braces in a str.format
    with StopSignals("apo: stopped at once by a second {signal}; resume with: " + command) as stop:
        try:
            with ranks.agreed(exit_status):
                opened = folder.open(values, cfg, resume, into_existing) if ranks.is_main() else None
            if folder.adopt(ranks.broadcast(opened)):  # finished: nothing to do
                return folder.path
            run = _Run(folder, resume, stop)
            inputs = _load(cfg)
            _start(values, run)
            trainer, no_reward = _prepare(cfg, run, inputs)
            _fit(trainer, run)
            return _finalize(cfg, run, trainer, inputs, no_reward)
        except RunDirBusy as e:
            raise cfglib.ConfigError(str(e)) from None
        finally:
            folder.lock.release()
            close_children()  # the reward worker and graders end with the run, not at interpreter exit


class _Run:
    """What one ``apo train`` carries from step to step: its folder (:class:`~apo.cli.run_folder.RunFolder`), whether
    it resumes, the signals, and the wall clock (the seconds of the steps a resumed run keeps, plus this process's)."""

    def __init__(self, folder: RunFolder, resume: bool, stop: StopSignals):
        self.folder, self.resume, self.stop = folder, resume, stop
        self.t0 = time.time()

    def wall_time_s(self) -> float:
        return self.folder.carried + time.time() - self.t0

    def rows(self) -> list[dict]:
        """The ``metrics.jsonl`` rows so far (:func:`apo.cli.plots.read_metrics`)."""
        from apo.cli.plots import read_metrics

        return read_metrics(self.folder.path)

    def stopped(self) -> bool:
        """Whether a signal asked any rank to stop (every rank must call it at the same point); a rank that got no
        signal takes the signal of the one that did, so that all end with the same status."""
        signums = [s for s in ranks.gather(self.stop.signum) if s is not None]
        if signums and self.stop.signum is None:
            self.stop.signum = signums[0]
        return bool(signums)

    def stop_error(self, step: int, saved: bool) -> RunStopped:
        stop, run_dir = self.stop, self.folder.path
        if saved:
            what = f"at step {step} (checkpoint-{step} saved)" if step else "before training started"
            return RunStopped(f"stopped by {stop.name} {what}; resume with: {resume_command(run_dir)}", stop.code)
        return RunStopped(
            f"stopped by {stop.name} at step {step} without a checkpoint (save_strategy=no); "
            f"{resume_command(run_dir)} starts it over",
            stop.code,
        )


class _Inputs(NamedTuple):
    reward_fn: Any
    model: Any
    tokenizer: Any
    train_ds: Any
    eval_ds: Any  # None without eval_before_after


def _load(cfg) -> _Inputs:
    """Step 2, every rank: threads and seeds, the inputs (reward, tokenizer, data, then the weights), and a training
    set that makes at least one optimizer step."""
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    _seed_everything(cfg.seed)
    with ranks.agreed(exit_status):
        with loading_inputs(cfg):
            inputs = _Inputs(*load_run_inputs(cfg))
        _check_one_step(cfg, inputs.train_ds)
    return inputs


def _start(values: dict[str, Any], run: _Run) -> None:
    """Step 3: a fresh run's folder, lock and ``config.yaml`` (rank 0; a resumed run has them)."""
    with ranks.agreed(exit_status):
        if ranks.is_main() and not run.resume:
            run.folder.start(values)


def _prepare(cfg, run: _Run, inputs: _Inputs):
    """Step 4: ``eval_before.json`` (unless a resumed run has it) and the trainer, with the guard that stops a run
    whose reward fails on every completion; ``(trainer, guard)``. A failure removes what the start wrote."""
    from apo.cli.callbacks import StopWithoutReward

    try:
        with ranks.agreed(exit_status):
            if cfg.eval_before_after and ranks.broadcast(not run.folder.has("eval_before.json")):
                _evaluate_before(cfg, run, inputs)
            if run.stopped():
                raise run.stop_error(0, True)
            no_reward = StopWithoutReward(inputs.reward_fn)
            return _build_trainer(cfg, run, inputs, no_reward), no_reward
    except BaseException:
        run.folder.undo_start()
        raise


def _evaluate_before(cfg, run: _Run, inputs: _Inputs) -> None:
    """The held-out evaluation of the starting policy (``eval_before.json``, written by rank 0)."""
    from apo.cli.callbacks import no_reward_reason, reward_counts

    counts = reward_counts(inputs.reward_fn)
    before = evaluate(inputs.model, inputs.tokenizer, inputs.eval_ds, inputs.reward_fn, **eval_kwargs(cfg))
    reason = no_reward_reason(inputs.reward_fn, counts, "the held-out evaluation before training")
    if reason is not None:
        raise RunFailed(reason + "; nothing was trained")
    if ranks.is_main():
        run.folder.write_json("eval_before.json", before)
        logger.info("held-out reward before training: %.4f", before["reward"])


def _build_trainer(cfg, run: _Run, inputs: _Inputs, no_reward):
    from transformers import PrinterCallback, ProgressCallback

    from apo.cli.callbacks import run_callbacks
    from apo.cli.lora import peft_config
    from apo.integrations.trl.trainer import APOTrainer

    with failing_start("could not build the trainer"):
        trainer = APOTrainer(
            model=inputs.model,
            reward_funcs=[inputs.reward_fn],
            args=cfg,
            train_dataset=inputs.train_ds,
            processing_class=inputs.tokenizer,
            callbacks=[*run_callbacks(run.folder.path, cfg.max_steps, run.wall_time_s, run.stopped), no_reward],
            peft_config=peft_config(cfg),
            optimizers=make_optimizers(cfg, inputs.model),
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _fit(trainer, run: _Run) -> None:
    """Step 5: train from the start or from the folder's checkpoint. A run whose checkpoint is its last step is only
    loaded: ``Trainer.train`` would train one step more. A setting refused before any step (an optimizer or
    scheduler setting) leaves the folder as it was (:meth:`~apo.cli.run_folder.RunFolder.undo_start`)."""
    checkpoint = run.folder.checkpoint
    state = checkpoint_state(checkpoint) if checkpoint is not None else {}
    if state and state["global_step"] >= max(1, state.get("max_steps") or 0):
        logger.info("%s holds the last step: writing the final model, evaluation and summary", checkpoint.name)
        trainer._load_from_checkpoint(str(checkpoint))
        trainer.state.global_step = state["global_step"]
        return
    try:
        with failing_start("training could not start", lambda: trainer.state.global_step == 0 and not run.resume):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except cfglib.ConfigError:  # nothing trained: the folder as it was
        run.folder.undo_start()
        raise


def _finalize(cfg, run: _Run, trainer, inputs: _Inputs, no_reward) -> Path:
    """Step 6: a run stopped by a signal ends here; a run that trained nothing to trust is marked failed; otherwise
    ``final/``, the evaluation after training and, last, the summary."""
    from apo.cli.callbacks import saves_checkpoints

    steps = trainer.state.global_step
    if run.stopped():
        raise run.stop_error(steps, saves_checkpoints(cfg))
    if no_reward.check("training") is not None or steps == 0:
        reason = no_reward.reason or "no optimizer step was trained"
        if ranks.is_main():
            run.folder.mark_failed(reason, steps, run.wall_time_s())
        raise RunFailed(f"{reason}; {run.folder.path}/summary.json marks the run failed, no final model written")
    run.folder.save_final(trainer, inputs.tokenizer)
    after = None
    if cfg.eval_before_after and inputs.eval_ds is not None:
        kwargs = eval_kwargs(cfg)
        if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
            kwargs["processes"] = None  # a sharded model: every rank runs every forward, in step
        after = evaluate(trainer.model, inputs.tokenizer, inputs.eval_ds, inputs.reward_fn, **kwargs)
    failed_frac = no_reward.failed_frac()
    if run.stopped():
        raise run.stop_error(steps, saves_checkpoints(cfg))
    if ranks.is_main():
        rows = run.rows()
        run.folder.finish(_summary(cfg, run, steps, failed_frac, after, rows), after, rows)
    return run.folder.path


def _summary(cfg, run: _Run, steps: int, failed_frac: float, after: dict | None, rows: list[dict]) -> dict[str, Any]:
    """``summary.json`` of a trained run (rank 0), from its ``metrics.jsonl`` ``rows`` and evaluations."""
    from apo.stats import stability_stats

    summary: dict[str, Any] = {"steps": steps, "wall_time_s": run.wall_time_s()}
    summary["reward_failed_frac"] = failed_frac
    summary["truncated_completions"] = cfg.truncated_completions  # what the rewards and evaluations gave cut text
    summary.update(clipped_ratio_summary(rows))
    if after is not None:
        before = run.folder.read_json("eval_before.json")
        summary.update(
            reward_before=before["reward"],
            reward_after=after["reward"],
            **reward_gain(before, after),
            eval_clipped_ratio_before=before.get("clipped_ratio"),
            eval_clipped_ratio_after=after["clipped_ratio"],
            **coverage_summary(before, after),
        )
    summary.update(stability_stats(rows))
    return summary


def exit_status(e: BaseException) -> int:
    """The exit status of the ``apo`` command that ends on ``e`` (see :mod:`apo.cli.main`)."""
    if isinstance(e, (cfglib.ConfigError, RunDirBusy)):
        return 2
    if isinstance(e, (RunStopped, ranks.PeerFailed)):
        return e.code
    if isinstance(e, KeyboardInterrupt):
        return 130
    return 1


def _check_one_step(cfg, train_ds) -> None:
    """Refuse, before any work, a training set too small for one optimizer step: TRL's sampler draws
    ``generation_batch_size / num_generations`` distinct prompts per generation batch and drops a short last one,
    so fewer prompts would train 0 steps and save the untrained model as if trained."""
    need = cfg.generation_batch_size // cfg.num_generations
    if len(train_ds) < need:
        size = f" with train_size={cfg.train_size}" if cfg.train_size is not None else ""
        raise cfglib.ConfigError(
            f"task={cfg.task!r}{size} gives {len(train_ds)} training prompts, fewer than the {need} of one "
            f"generation batch (generation_batch_size {cfg.generation_batch_size} / num_generations "
            f"{cfg.num_generations}): nothing would be trained; add prompts or lower per_device_train_batch_size"
        )


@contextlib.contextmanager
def failing_start(what: str, applies=lambda: True):
    """Turn a ``ValueError`` / ``TypeError`` / ``ImportError`` / ``KeyError`` raised inside (a setting that TRL,
    transformers or torch refuse while the trainer, its optimizer or its scheduler is built:
    ``lr_scheduler_kwargs`` the scheduler does not take, an ``optim`` whose package is missing) into a one-line
    ``ConfigError`` ``<what>: <type>: <message>``, when ``applies()`` (e.g. no step trained yet); other exceptions,
    and any once a step is trained, pass unchanged. So does the ``ConnectionError`` of TRL's vLLM client when no
    server answers (``vllm_mode=server``) within ``vllm_server_timeout``."""
    from requests.exceptions import ConnectionError as ServerUnreachable

    try:
        yield
    except cfglib.ConfigError:
        raise
    except (ValueError, TypeError, ImportError, KeyError, ServerUnreachable) as e:
        if not applies():
            raise
        text = " ".join(str(e).split())
        raise cfglib.ConfigError(f"{what}: {type(e).__name__}: {text}" if text else f"{what}: {e!r}") from None


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizers(cfg, model):
    """The ``optimizers`` argument of the trainer: the Trainer's own (``(None, None)``), or torch-optimi's
    Kahan-summed AdamW for low-precision weights (``master_weights=false`` with ``bf16``/``fp16``)."""
    from apo.integrations.trl.precision import kahan_adamw

    if cfg.master_weights or not (cfg.bf16 or cfg.fp16):
        return (None, None)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt = kahan_adamw(model, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    return (opt, None)


def eval_kwargs(cfg) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` that come from a config (the same for ``apo eval`` and a run's
    before/after evaluation)."""
    chat_kwargs = cfg.chat_template_kwargs
    if isinstance(chat_kwargs, str):  # GRPOConfig accepts a JSON string
        chat_kwargs = json.loads(chat_kwargs)
    return dict(
        samples=cfg.eval_samples,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_completion_length,
        seed=cfg.eval_seed,
        batch_size=cfg.eval_batch_size,
        chat_template_kwargs=chat_kwargs,
        truncated_completions=cfg.truncated_completions,
        pass_ks=cfg.pass_at_k,
        answer_format=_answer_format(cfg),
        processes=ranks,  # the launch's processes share the batches
    )


def _answer_format(cfg) -> str | None:
    """How :func:`evaluate` reads an answer to count distinct ones: the config's ``answer_format``, else the first
    number for the ``arithmetic`` reward (its own rule) and ``auto`` for the others."""
    from apo.tasks.datasets import default_reward

    if cfg.answer_format is not None:
        return cfg.answer_format
    return None if (cfg.reward or default_reward(cfg.task)) == "arithmetic" else "auto"


def clipped_ratio_summary(rows: list[dict]) -> dict[str, float]:
    """``{"clipped_ratio_mean": mean over the logged steps, "clipped_ratio_last": the last step's}`` of TRL's
    ``completions/clipped_ratio`` in the ``metrics.jsonl`` rows (empty when no step logged it)."""
    values = [float(row["completions/clipped_ratio"]) for row in rows if "completions/clipped_ratio" in row]
    return {"clipped_ratio_mean": sum(values) / len(values), "clipped_ratio_last": values[-1]} if values else {}


def _note_fsdp_on_cpu(cfg) -> None:
    """Say it when a launch asked for FSDP (``accelerate launch --use_fsdp``) and accelerate runs DDP instead: it turns
    ``ACCELERATE_USE_FSDP`` into FSDP only for accelerator device types, not for processes on a CPU (``MULTI_CPU``,
    ``accelerate/state.py``, ``AcceleratorState.__init__``), so every rank holds the whole model."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or not ranks.is_main():
        return
    from accelerate.utils import DistributedType

    if cfg.distributed_state.distributed_type == DistributedType.MULTI_CPU:
        logger.warning(
            "FSDP was asked for (ACCELERATE_USE_FSDP) but accelerate runs DDP on CPU processes (it shards models only "
            "on accelerators): every process holds the whole model"
        )
