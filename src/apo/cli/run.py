"""`apo train` and `apo eval`: a run directory from a config, and the held-out reward of a policy.

A run directory holds::

    config.yaml          the resolved input settings (reloadable with `apo train RUN/config.yaml`)
    metrics.jsonl        one JSON line per optimizer step: every logged metric, with `step`, `reward`, `apo/alpha`,
                         and `wall_time_s`, the run's seconds so far (after a resume: those of the kept steps too)
    eval_before.json     held-out mean reward of the starting policy, its 95% interval over prompts and the
                         per-prompt mean rewards, pass@k for k = 1..eval_samples, distinct answers per prompt and
                         token entropy, each with its interval over prompts (same prompts and seed as eval_after.json)
    eval_after.json      ... of the trained policy
    curves.png           reward, alpha and ESS per step
    checkpoint-N/        safetensors weights (with use_peft: the LoRA adapter only), optimizer, RNG and the
                         alpha-schedule state; a checkpoint folder is
                         written under .partial/, completed by apo_manifest.json (every file's size and SHA-256,
                         written last) and renamed into place, so a kill leaves the last one whole; --resume
                         passes over a checkpoint that does not match its manifest, naming it
    final/               the trained model (safetensors) and tokenizer; with use_peft, the adapter
                         (adapter_model.safetensors, adapter_config.json naming the base model's folder) and
                         tokenizer: `apo eval --policy RUN/final` loads both, `apo merge RUN/final OUT` writes the
                         merged full model (apo.cli.lora)
    summary.json         wall time, steps, truncated_completions (what cut completions scored), rewards
                         before/after, the gain with its paired 95% interval over prompts (reward_gain_ci95,
                         apo.tasks.evaluate.reward_gain), TRL's completions/clipped_ratio (the
                         fraction of completions cut at max_completion_length: mean over the steps and last step), the
                         held-out clipped ratio before/after, and the stability numbers of
                         apo.stats.stability_stats (peak and final smoothed training reward, drop, collapsed),
                         and pass@k, distinct answers and token entropy before/after
                         (apo.tasks.evaluate.coverage_summary),
                         reward_failed_frac (training completions scored 0.0 because the reward failed); written
                         last, so it marks the run finished (--resume of a finished run then reports it and changes
                         nothing); a run whose reward failed on every completion writes only failed (the reason),
                         steps and wall_time_s
    .apo.lock            present while an apo process runs here (its pid): a second one is refused

The JSON and YAML files and final/ are written under a temporary name and renamed (metrics.jsonl gets one appended
line per step; its lines past the resumed checkpoint are dropped on resume), so a reader never sees half of one;
curves.png is redrawn at the end of every run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from apo.atomic import write_json, write_text
from apo.cli import config as cfglib
from apo.cli import ranks
from apo.cli.lock import LOCK_NAME, RunDirBusy, RunLock, holder
from apo.cli.process import RunStopped, StopSignals
from apo.tasks.evaluate import coverage_summary, evaluate, reward_gain

logger = logging.getLogger("apo")


class RunFailed(RuntimeError):
    """A run that ran but produced nothing to trust (no completion could be scored); the message says why and where
    the run marks it (``summary.json``'s ``failed``). Exit status 1."""


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(cfg):
    """``(path, tokenizer)`` for ``cfg.model`` (its files prepared offline when it is ``tiny-arith`` or
    ``smollm2``): the tokenizer alone decides how prompts are rendered, so data can be checked before the weights
    load."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from apo.tasks.models import resolve_model

    hf_logging.disable_progress_bar()  # the run has its own progress bar

    from apo.cli.lora import adapter_base

    # An adapter folder (a LoRA run's final/) holds its tokenizer; its weights load on its base (load_policy).
    path = (
        cfg.model
        if adapter_base(cfg.model) is not None
        else resolve_model(cfg.model, os.path.expanduser(cfg.cache_dir))
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return path, tokenizer


def load_policy(cfg):
    """``(model, tokenizer)`` for ``cfg.model`` (prepared offline when it is ``tiny-arith`` or ``smollm2``; a LoRA
    adapter folder loads on its base model, :func:`apo.cli.lora.load_adapter_model`). The weights are float32
    (master weights; ``bf16``/``fp16`` autocast the compute), or bf16/fp16 with ``master_weights=false``
    (:mod:`apo.integrations.trl.precision`)."""
    from transformers import AutoModelForCausalLM

    from apo.cli.lora import adapter_base, load_adapter_model
    from apo.integrations.trl.precision import check_precision_settings, weight_dtype

    check_precision_settings(
        cfg.bf16,
        cfg.fp16,
        cfg.master_weights,
        cfg.use_cpu,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    path, tokenizer = load_tokenizer(cfg)
    dtype = weight_dtype(cfg.bf16, cfg.fp16, cfg.master_weights)
    if adapter_base(path) is not None:
        return load_adapter_model(path, dtype), tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def make_optimizers(cfg, model):
    """The ``optimizers`` argument of the trainer: the Trainer's own (``(None, None)``), or torch-optimi's
    Kahan-summed AdamW for low-precision weights (``master_weights=false`` with ``bf16``/``fp16``)."""
    from apo.integrations.trl.precision import kahan_adamw

    if cfg.master_weights or not (cfg.bf16 or cfg.fp16):
        return (None, None)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt = kahan_adamw(model, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    return (opt, None)


def load_data(cfg, tokenizer, split: str, n: int | None, seed: int):
    """The prompts of ``split``: ``train`` from ``cfg.task``; ``eval`` from ``cfg.eval_task`` used whole when it is
    set, else the held-out part of ``cfg.task`` (a single file is split into disjoint parts; with ``eval_task`` set,
    a single training file is used whole). ``math_level`` filters whichever of them is MATH-style data. The
    evaluation source and size are logged."""
    from apo.tasks.datasets import load_task, task_kind

    name, kw = cfg.task, dict(cfg.task_options)
    if split == "eval" and cfg.eval_task is not None:
        name, kw = cfg.eval_task, dict(cfg.eval_task_options)
    if cfg.math_level is not None and (name == cfg.task or task_kind(name) == "math"):
        kw["level"] = cfg.math_level
    if cfg.eval_task is not None:
        same = Path(os.path.expanduser(cfg.task)).resolve() == Path(os.path.expanduser(cfg.eval_task)).resolve()
        if same and Path(os.path.expanduser(cfg.task)).is_file():
            raise ValueError(
                f"eval_task={cfg.eval_task!r} is the training file task={cfg.task!r}: unset eval_task to hold out a "
                "part of it (task_options.eval_fraction), or name another file"
            )
        kw["whole_file"] = True
    ds = load_task(name, split, n, seed, tokenizer, **kw)
    if split == "eval":
        source = "eval_task, used whole" if cfg.eval_task is not None else "held-out part of task"
        logger.info("evaluation data: %d prompts from %s (%s)", len(ds), name, source)
    return ds


def load_reward_fn(cfg):
    """The config's reward function wrapped so that raising, hanging or NaN rewards score 0 and are logged."""
    from apo.tasks.datasets import default_reward
    from apo.tasks.rewards import load_reward, safe_reward

    fn = load_reward(
        cfg.reward or default_reward(cfg.task),
        answer_format=cfg.answer_format,
        partial_credit=cfg.partial_credit or None,  # 0: the reward's binary default, any reward
    )
    # The whole batch in one call (TRL's contract: a reward may depend on its batch), bounded per call.
    return safe_reward(fn, timeout_s=cfg.reward_timeout, per_completion=False)


def load_inputs(cfg, split: str):
    """``(reward_fn, model, tokenizer, dataset)`` of a config for ``split`` (``train``: ``train_size`` prompts drawn
    with ``seed``; ``eval``: ``eval_size`` held-out prompts drawn with ``eval_seed``). The loaders' ``ValueError``s
    name the setting (``model=``, ``task=``, ``reward=``) and are raised as ``ConfigError``s, before anything runs;
    the data are loaded and checked before the model's weights."""
    return _load_inputs(cfg, (split,))


def load_run_inputs(cfg):
    """``(reward_fn, model, tokenizer, train_dataset, eval_dataset)`` of ``apo train``: :func:`load_inputs` for the
    training prompts, plus the evaluation prompts (``None`` without ``eval_before_after``), both checked before the
    model's weights load."""
    return _load_inputs(cfg, ("train", "eval") if cfg.eval_before_after else ("train",), with_none=True)


def _load_inputs(cfg, splits: tuple[str, ...], with_none: bool = False):
    from apo.cli.lora import check_model

    sizes = {"train": (cfg.train_size, cfg.seed), "eval": (cfg.eval_size, cfg.eval_seed)}
    try:
        reward_fn = load_reward_fn(cfg)
        path, tokenizer = load_tokenizer(cfg)
        data = [load_data(cfg, tokenizer, split, *sizes[split]) for split in splits]
        if with_none:
            data += [None] * (2 - len(data))
            check_model(cfg, path)  # training: the LoRA target modules exist
        model, tokenizer = load_policy(cfg)
        return reward_fn, model, tokenizer, *data
    except ValueError as e:
        raise cfglib.ConfigError(str(e)) from None


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


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that matches its manifest (sizes and SHA-256 of every file, see
    :mod:`apo.integrations.trl.checkpoints`); a newer one that does not is named in a warning and passed over."""
    from apo.integrations.trl.checkpoints import newest_intact_checkpoint

    checkpoint, skipped = newest_intact_checkpoint(run_dir)
    for path, problem in skipped:
        logger.warning(
            "%s is incomplete or corrupt (%s): resuming from %s",
            path,
            problem,
            checkpoint.name if checkpoint is not None else "the start",
        )
    return checkpoint


def _checkpoint_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _remove_leftovers(run_dir: Path) -> None:
    """Remove what a killed process may have left half-written: the checkpoint staging folder and ``*.tmp`` files."""
    shutil.rmtree(run_dir / ".partial", ignore_errors=True)
    for p in run_dir.glob("*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def is_finished(run_dir: Path) -> bool:
    """A run is finished once ``summary.json`` is written (the last file of a run)."""
    return (run_dir / "summary.json").is_file()


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in ``run_dir`` (its saved config holds every setting)."""
    return f"apo train {shlex.quote(str(run_dir / 'config.yaml'))} --resume"


def _truncate_metrics(path: Path, last_step: int) -> float:
    """Drop metric lines past ``last_step`` (they belong to steps the resumed run will redo); returns the
    ``wall_time_s`` of the last line kept (0 without one): the time the resumed run had spent on its kept steps."""
    if not path.exists():
        return 0.0
    keep, carried = [], 0.0
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:  # a line torn by the kill
            continue
        if row.get("step", 0) <= last_step:
            keep.append(ln)
            carried = float(row.get("wall_time_s", 0.0))
    write_text(path, "".join(ln + "\n" for ln in keep))
    return carried


def _callbacks(run_dir: Path, max_steps: int, wall_time_s, stopped=None):
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """After a first SIGINT / SIGTERM (``stopped()``: on any rank, asked of every rank at each step end): end
        training at this optimizer step, saving a checkpoint (unless ``save_strategy`` is ``no``); the step's metrics
        are logged as usual."""

        def on_step_end(self, args, state, control, **kwargs):
            if stopped is not None and stopped():
                control.should_training_stop = True
                control.should_save = _saves(args)

    class MetricsJsonl(TrainerCallback):
        """Appends one JSON line per logged optimizer step to ``metrics.jsonl`` (flushed and fsynced)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs and "reward" not in logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), "wall_time_s": wall_time_s()}
            row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

    class Progress(TrainerCallback):
        """A progress bar with step, reward and alpha (replaces the Trainer's own)."""

        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=state.max_steps or max_steps, initial=state.global_step, desc="apo train", dynamic_ncols=True
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

    return [MetricsJsonl(), Progress(), StopOnSignal()]


def _saves(cfg) -> bool:
    strategy = getattr(cfg.save_strategy, "value", cfg.save_strategy)
    return str(strategy) != "no"


RESUME_MAY_DIFFER = ("output_dir", "torch_threads")
"""Keys ``--resume`` lets differ from the saved run: where the run lives, and how many threads this machine gives
it (a run moved to a machine with other cores resumes; float sums may then round differently from an uninterrupted
run)."""


def saved_config_diff(run_dir: Path, values: dict[str, Any]) -> list[str]:
    """The sorted keys whose value in ``run_dir/config.yaml`` differs from ``values`` (a key missing on one side
    counts as ``None``). The saved config is read as this version resolves it (:func:`apo.cli.config.resolve_values`),
    so a key added since the run was saved (``master_weights``, ``truncated_completions``...) counts with the value
    the saved config resolves to, and a run saved by an earlier version resumes."""
    path = run_dir / "config.yaml"
    try:
        saved = cfglib.resolve_values(path)
    except cfglib.ConfigError:  # a saved config this version refuses: compare the file as written
        saved = cfglib.yaml_load(path.read_text(), str(path)) or {}
    return sorted(k for k in set(saved) | set(values) if saved.get(k) != values.get(k))


def check_resume_kind(run_dir: Path, values: dict[str, Any]) -> None:
    """A LoRA run resumes only as a LoRA run, and a full run only as a full one: ``use_peft`` must equal the saved
    config's, and the checkpoints must hold what it says (an adapter, or full weights).

    Raises:
        ConfigError: ``--resume: the run in R trained a LoRA adapter (use_peft=true); resume it with use_peft=true``.
    """
    from apo.cli.lora import ADAPTER_CONFIG

    saved = cfglib.yaml_load((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml")) or {}
    was, now = bool(saved.get("use_peft")), bool(values.get("use_peft"))
    kinds = {True: "trained a LoRA adapter (use_peft=true)", False: "trained every weight (use_peft=false)"}
    if was != now:
        raise cfglib.ConfigError(
            f"--resume: the run in {run_dir} {kinds[was]}; config key 'use_peft' must stay {str(was).lower()}"
        )
    for checkpoint in run_dir.glob("checkpoint-*"):
        if (checkpoint / ADAPTER_CONFIG).is_file() != now:
            raise cfglib.ConfigError(
                f"--resume: {checkpoint} holds {'an adapter' if not now else 'full weights'} but config key "
                f"'use_peft' is {str(now).lower()}"
            )


INTO_EXISTING = "--into-existing"
"""The flag that lets a run be written into a folder that holds other files (:func:`foreign_entries`)."""


def foreign_entries(folder: Path) -> list[str]:
    """The sorted names in ``folder`` when it exists and holds something other than a run (no ``config.yaml``,
    ``metrics.jsonl``, ``eval_before.json``, ``checkpoint-*`` nor the run lock ``.apo.lock``); empty otherwise. A run
    writes ``final/``, ``curves.png``, ``summary.json``... into its folder, replacing files of those names, so such a
    folder is only written into with :data:`INTO_EXISTING`."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir())
    markers = ("config.yaml", "metrics.jsonl", "eval_before.json", LOCK_NAME)
    if any(n in markers or n.startswith("checkpoint-") for n in names):
        return []
    return names


def refuse_foreign(folder: Path, key: str = "output_dir", what: str = "run") -> None:
    """Raise when ``folder`` holds files and no run (:func:`foreign_entries`); ``key`` names the setting (a config
    key, or a flag such as ``--out``), ``what`` what would be written."""
    names = foreign_entries(folder)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        new = f"pass {key} <new folder>" if key.startswith("-") else f"set {key}=<new folder>"
        raise cfglib.ConfigError(
            f"{key} {str(folder)!r} is a folder that holds no {what} ({shown}): {new}, or pass {INTO_EXISTING} to "
            f"write the {what} into it (files of the same names are replaced)"
        )


def train(values: dict[str, Any], *, resume: bool = False, into_existing: bool = False) -> Path:
    """Run ``apo train`` for validated config ``values`` (:func:`apo.cli.config.resolve_values`); returns the run
    directory.

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
      (:func:`refuse_foreign`), since a run replaces ``final/``, ``curves.png``, ``summary.json``...
    - One command per ``output_dir`` (:mod:`apo.cli.lock`); the reward worker and grader processes are closed when
      the run ends, however it ends.
    - A training set too small for one optimizer step is refused before any work. A run whose reward failed on every
      completion (of the evaluation before training, of its first 2 steps, or of a shorter run) raises
      :class:`RunFailed`; once training started it first writes ``summary.json`` with ``failed`` (the reason) and
      no final model. ``summary.json`` of every trained run gives ``reward_failed_frac``.

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
    run_dir = Path(cfg.output_dir)
    command = resume_command(run_dir).replace("{", "{{").replace("}", "}}")  # literal braces in a str.format
    lock = RunLock(run_dir)
    with StopSignals("apo: stopped at once by a second {signal}; resume with: " + command) as stop:
        try:
            with ranks.agreed(exit_status):
                opened = _open_run(values, cfg, run_dir, resume, into_existing, lock) if ranks.is_main() else None
            checkpoint, carried, finished = ranks.broadcast(opened)
            if finished:
                return run_dir
            return _train(values, cfg, _Run(run_dir, resume, stop, lock, checkpoint, carried))
        except RunDirBusy as e:
            raise cfglib.ConfigError(str(e)) from None
        finally:
            lock.release()
            close_children()  # the reward worker and graders end with the run, not at interpreter exit


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


def exit_status(e: BaseException) -> int:
    """The exit status of the ``apo`` command that ends on ``e`` (see :mod:`apo.cli.main`)."""
    if isinstance(e, (cfglib.ConfigError, RunDirBusy)):
        return 2
    if isinstance(e, (RunStopped, ranks.PeerFailed)):
        return e.code
    if isinstance(e, KeyboardInterrupt):
        return 130
    return 1


class _Run:
    """What one ``apo train`` carries from step to step: the folder, the resume point, the signals, the lock and the
    wall clock (``carried``: the seconds of the steps a resumed run keeps)."""

    def __init__(self, run_dir: Path, resume: bool, stop: StopSignals, lock: RunLock, checkpoint, carried: float):
        self.run_dir, self.resume, self.stop, self.lock = run_dir, resume, stop, lock
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.carried, self.t0 = carried, time.time()

    def wall_time_s(self) -> float:
        return self.carried + time.time() - self.t0

    def stopped(self) -> bool:
        """Whether a signal asked any rank to stop (every rank must call it at the same point); a rank that got no
        signal takes the signal of the one that did, so that all end with the same status."""
        signums = [s for s in ranks.gather(self.stop.signum) if s is not None]
        if signums and self.stop.signum is None:
            self.stop.signum = signums[0]
        return bool(signums)

    def stop_error(self, step: int, saved: bool) -> RunStopped:
        stop, run_dir = self.stop, self.run_dir
        if saved:
            what = f"at step {step} (checkpoint-{step} saved)" if step else "before training started"
            return RunStopped(f"stopped by {stop.name} {what}; resume with: {resume_command(run_dir)}", stop.code)
        return RunStopped(
            f"stopped by {stop.name} at step {step} without a checkpoint (save_strategy=no); "
            f"{resume_command(run_dir)} starts it over",
            stop.code,
        )


def _open_run(values: dict[str, Any], cfg, run_dir: Path, resume: bool, into_existing: bool, lock: RunLock):
    """Rank 0's checks of the run folder before any work: ``(checkpoint to resume from or None, the wall time of the
    kept steps, finished)``. A resume takes the lock here (a fresh run takes it once its inputs are loaded,
    :func:`_start_run_dir`), drops what a killed run left half-written and the metric lines past the checkpoint."""
    cfglib.check_folder(run_dir, "config key 'output_dir':", "set output_dir=<a writable folder>")
    if not resume and not into_existing:
        refuse_foreign(run_dir, "output_dir")
    if (pid := holder(run_dir)) is not None:
        raise RunDirBusy(run_dir, pid if pid > 0 else None)
    if not resume:
        files = ("metrics.jsonl", "config.yaml", "eval_before.json")
        leftovers = [n for n in files if (run_dir / n).exists()] + [p.name for p in run_dir.glob("checkpoint-*")]
        if leftovers:
            raise cfglib.ConfigError(
                f"output_dir {str(run_dir)!r} already holds a run: pass --resume, or set output_dir=<new folder>"
            )
        return None, 0.0, False
    if not (run_dir / "config.yaml").exists():
        raise cfglib.ConfigError(f"--resume: no run to resume in {run_dir} (no config.yaml); drop --resume")
    lock.acquire()
    check_resume_kind(run_dir, values)
    # the folder being resumed is the run, wherever it was started from (a saved output_dir may be relative), and
    # the thread count is the machine's, not the run's (the math is the same up to float summation order)
    diff = saved_config_diff(run_dir, values)
    if "torch_threads" in diff:
        logger.info("--resume with torch_threads=%s (the saved run used another)", values.get("torch_threads"))
    diff = [k for k in diff if k not in RESUME_MAY_DIFFER]
    if diff:
        raise cfglib.ConfigError(f"--resume: the config differs from the saved run in {diff}")
    if is_finished(run_dir):
        failed = json.loads((run_dir / "summary.json").read_text()).get("failed")
        if failed:
            raise cfglib.ConfigError(f"--resume: {run_dir} failed ({failed}); start over with a new output_dir")
        logger.info("%s is finished (summary.json written): nothing to resume, nothing changed", run_dir)
        return None, 0.0, True
    _remove_leftovers(run_dir)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is not None:
        from apo.integrations.trl.precision import checkpoint_weight_note

        check_process_count(checkpoint)
        if note := checkpoint_weight_note(checkpoint, cfg.master_weights):
            logger.warning(note)
    carried = _truncate_metrics(run_dir / "metrics.jsonl", int(checkpoint.name.split("-")[1]) if checkpoint else 0)
    return (None if checkpoint is None else str(checkpoint)), carried, False


def checkpoint_processes(checkpoint: Path) -> int | None:
    """How many processes wrote ``checkpoint``: Transformers saves one random state per process,
    ``rng_state_<rank>.pth`` with several and ``rng_state.pth`` with one (``None`` when it holds neither)."""
    per_rank = list(checkpoint.glob("rng_state_*.pth"))
    if per_rank:
        return len(per_rank)
    return 1 if (checkpoint / "rng_state.pth").is_file() else None


def check_process_count(checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` with another number of processes than wrote it: the global batch
    (``per_device_train_batch_size`` x processes), the order in which the sampler hands prompts out and each
    process's random state would all change, so the resumed steps would not continue the run.

    Raises:
        ConfigError: ``--resume: checkpoint-4 was written by 2 processes and this launch has 1; ...``.
    """
    saved, now = checkpoint_processes(checkpoint), ranks.world_size()
    if saved is not None and saved != now:
        how = "apo train" if saved == 1 else f"torchrun --nproc_per_node {saved} -m apo.cli.main train"
        raise cfglib.ConfigError(
            f"--resume: {checkpoint.name} was written by {saved} process{'es' if saved > 1 else ''} and this launch "
            f"has {now}: resume it with {saved} ({how} ... --resume)"
        )


def _train(values: dict[str, Any], cfg, run: _Run) -> Path:
    """The run itself, on every rank: load the inputs, evaluate before, build the trainer, train, finalise."""
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    _seed_everything(cfg.seed)
    with ranks.agreed(exit_status):
        with loading_inputs(cfg):
            reward_fn, model, tokenizer, train_ds, eval_ds = load_run_inputs(cfg)
        _check_one_step(cfg, train_ds)
    created: list[Path] = []
    with ranks.agreed(exit_status):
        if ranks.is_main() and not run.resume:
            created = _start_run_dir(run.run_dir, values, run.lock)
    try:
        with ranks.agreed(exit_status):
            if cfg.eval_before_after and ranks.broadcast(not (run.run_dir / "eval_before.json").exists()):
                _evaluate_before(cfg, run.run_dir, model, tokenizer, eval_ds, reward_fn)
            if run.stopped():
                raise run.stop_error(0, True)
            no_reward = _StopWithoutReward(reward_fn)
            trainer = _build_trainer(cfg, run, model, tokenizer, train_ds, reward_fn, no_reward)
    except BaseException:
        _undo_start(run.run_dir, created, run.lock)
        raise
    _fit(trainer, run, created)
    if run.stopped():
        raise run.stop_error(trainer.state.global_step, _saves(cfg))
    if no_reward.check("training") is not None or trainer.state.global_step == 0:
        reason = no_reward.reason or "no optimizer step was trained"
        if ranks.is_main():
            failed = {"failed": reason, "steps": trainer.state.global_step, "wall_time_s": run.wall_time_s()}
            write_json(run.run_dir / "summary.json", failed)
        raise RunFailed(f"{reason}; {run.run_dir}/summary.json marks the run failed, no final model written")
    _save_final(trainer, tokenizer, run.run_dir)
    after = None
    if cfg.eval_before_after and eval_ds is not None:
        after = evaluate(trainer.model, tokenizer, eval_ds, reward_fn, **eval_kwargs(cfg))
    failed_frac = no_reward.failed_frac()
    if run.stopped():
        raise run.stop_error(trainer.state.global_step, _saves(cfg))
    if ranks.is_main():
        _write_summary(cfg, run, trainer.state.global_step, failed_frac, after)
    return run.run_dir


def _evaluate_before(cfg, run_dir: Path, model, tokenizer, eval_ds, reward_fn) -> None:
    """The held-out evaluation of the starting policy (``eval_before.json``, written by rank 0)."""
    counts = _reward_counts(reward_fn)
    before = evaluate(model, tokenizer, eval_ds, reward_fn, **eval_kwargs(cfg))
    _fail_if_no_reward(reward_fn, counts, "the held-out evaluation before training")
    if ranks.is_main():
        write_json(run_dir / "eval_before.json", before)
        logger.info("held-out reward before training: %.4f", before["reward"])


def _build_trainer(cfg, run: _Run, model, tokenizer, train_ds, reward_fn, no_reward):
    from transformers import PrinterCallback, ProgressCallback

    from apo.cli.lora import peft_config
    from apo.integrations.trl.trainer import APOTrainer

    with failing_start("could not build the trainer"):
        trainer = APOTrainer(
            model=model,
            reward_funcs=[reward_fn],
            args=cfg,
            train_dataset=train_ds,
            processing_class=tokenizer,
            callbacks=[*_callbacks(run.run_dir, cfg.max_steps, run.wall_time_s, run.stopped), no_reward.callback],
            peft_config=peft_config(cfg),
            optimizers=make_optimizers(cfg, model),
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _fit(trainer, run: _Run, created: list[Path]) -> None:
    """Train from the start or from ``run.checkpoint``. A run whose checkpoint is its last step is only loaded:
    ``Trainer.train`` would train one step more. A setting refused before any step (an optimizer or scheduler
    setting) leaves the folder as it was (:func:`_undo_start`)."""
    state = _checkpoint_state(run.checkpoint) if run.checkpoint is not None else {}
    if state and state["global_step"] >= max(1, state.get("max_steps") or 0):
        logger.info("%s holds the last step: writing the final model, evaluation and summary", run.checkpoint.name)
        trainer._load_from_checkpoint(str(run.checkpoint))
        trainer.state.global_step = state["global_step"]
        return
    try:
        with failing_start("training could not start", lambda: trainer.state.global_step == 0 and not run.resume):
            trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    except cfglib.ConfigError:  # nothing trained: the folder as it was
        _undo_start(run.run_dir, created, run.lock)
        raise


def _save_final(trainer, tokenizer, run_dir: Path) -> None:
    """``final/``: the trained model (every rank takes part: a sharded model is gathered) and the tokenizer, written
    under ``final.tmp`` and renamed by rank 0."""
    final, tmp = run_dir / "final", run_dir / "final.tmp"
    if ranks.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if ranks.is_main():
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


def _write_summary(cfg, run: _Run, steps: int, failed_frac: float, after: dict | None) -> None:
    """``eval_after.json``, ``curves.png`` and, last, ``summary.json`` (rank 0)."""
    from apo.cli.plots import plot_run, read_metrics
    from apo.stats import stability_stats

    rows = read_metrics(run.run_dir)
    summary: dict[str, Any] = {"steps": steps, "wall_time_s": run.wall_time_s()}
    summary["reward_failed_frac"] = failed_frac
    summary["truncated_completions"] = cfg.truncated_completions  # what the rewards and evaluations gave cut text
    summary.update(clipped_ratio_summary(rows))
    if after is not None:
        write_json(run.run_dir / "eval_after.json", after)
        before = json.loads((run.run_dir / "eval_before.json").read_text())
        summary.update(
            reward_before=before["reward"],
            reward_after=after["reward"],
            **reward_gain(before, after),
            eval_clipped_ratio_before=before.get("clipped_ratio"),
            eval_clipped_ratio_after=after["clipped_ratio"],
            **coverage_summary(before, after),
        )
    summary.update(stability_stats(rows))
    plot_run(run.run_dir, rows=rows)
    write_json(run.run_dir / "summary.json", summary)  # last: marks the run finished


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


def _reward_counts(reward_fn) -> tuple[int, int]:
    """``(failed, scored)``: the completions the reward failed on and scored so far, summed over the ranks (each
    rank scores its own; every rank calls this at the same points)."""
    return ranks.sum_over_ranks((getattr(reward_fn, "n_failed", 0), getattr(reward_fn, "n_scored", 0)))


def _no_reward_reason(reward_fn, counts: tuple[int, int], where: str) -> str | None:
    """The reason to stop when the reward failed (raised, timed out, returned None/NaN) on every completion scored
    since ``counts`` (:func:`_reward_counts`), else ``None``."""
    failed, scored = (a - b for a, b in zip(_reward_counts(reward_fn), counts, strict=True))
    if scored == 0 or failed < scored:
        return None
    name = getattr(reward_fn, "__name__", "reward")
    return f"reward {name} failed on every one of the {scored} completions of {where} ({reward_fn.last_failure})"


def _fail_if_no_reward(reward_fn, counts: tuple[int, int], where: str) -> None:
    reason = _no_reward_reason(reward_fn, counts, where)
    if reason is not None:
        raise RunFailed(reason + "; nothing was trained")


class _StopWithoutReward:
    """Trainer callback: stop training once every completion scored since training started has failed (raised,
    timed out, returned None/NaN) over at least ``min_steps`` optimizer steps (``reason`` says why; a run shorter
    than that is judged at its end by :meth:`check`). A failure of some calls only (a batch that timed out) is
    counted in ``failed_frac`` and training goes on."""

    def __init__(self, reward_fn, min_steps: int = 2):
        from transformers import TrainerCallback

        self.reward_fn, self.reason = reward_fn, None
        self.start = _reward_counts(reward_fn)
        outer, steps = self, [0]

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                steps[0] += 1
                if steps[0] >= min_steps and outer.check(f"the first {steps[0]} steps") is not None:
                    control.should_training_stop = True
                    control.should_save = False

        self.callback = Callback()

    def check(self, where: str) -> str | None:
        """Set and return ``reason`` if every completion scored since the start failed (``where``: which steps)."""
        self.reason = self.reason or _no_reward_reason(self.reward_fn, self.start, where)
        return self.reason

    def failed_frac(self) -> float:
        failed, scored = (a - b for a, b in zip(_reward_counts(self.reward_fn), self.start, strict=True))
        return failed / scored if scored else 0.0


@contextlib.contextmanager
def failing_start(what: str, applies=lambda: True):
    """Turn a ``ValueError`` / ``TypeError`` / ``ImportError`` / ``KeyError`` raised inside (a setting that TRL,
    transformers or torch refuse while the trainer, its optimizer or its scheduler is built:
    ``lr_scheduler_kwargs`` the scheduler does not take, an ``optim`` whose package is missing) into a one-line
    ``ConfigError`` ``<what>: <type>: <message>``, when ``applies()`` (e.g. no step trained yet); other exceptions,
    and any once a step is trained, pass unchanged."""
    try:
        yield
    except cfglib.ConfigError:
        raise
    except (ValueError, TypeError, ImportError, KeyError) as e:
        if not applies():
            raise
        text = " ".join(str(e).split())
        raise cfglib.ConfigError(f"{what}: {type(e).__name__}: {text}" if text else f"{what}: {e!r}") from None


@contextlib.contextmanager
def loading_inputs(cfg):
    """Turn any failure to load the model, data or reward (other than a :class:`ConfigError`) into a one-line
    ``ConfigError`` naming the settings involved and the chain of causes: a library's own exception (e.g. a
    ``DatasetGenerationError`` for a task file that is not JSON) says what went wrong but not which setting to
    change. Meanwhile ``datasets``' own ERROR log lines are held back: the error raised says the same in one line."""

    def drop_dataset_errors(record: logging.LogRecord) -> bool:
        return not (record.name.startswith("datasets") and record.levelno >= logging.ERROR)

    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # "Generating train split" bars: the run has its own progress bar
    except ImportError:
        pass
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(drop_dataset_errors)
    try:
        yield
    except cfglib.ConfigError:
        raise
    except Exception as e:
        causes, x = [], e
        while x is not None and len(causes) < 5:
            text = " ".join(str(x).split())
            causes.append(f"{type(x).__name__}: {text}" if text else type(x).__name__)
            x = x.__cause__ or (None if x.__suppress_context__ else x.__context__)
        raise cfglib.ConfigError(
            f"could not load the inputs (model={cfg.model!r}, task={cfg.task!r}, reward={cfg.reward!r}): "
            + "; caused by ".join(causes)
        ) from None
    finally:
        for h in handlers:
            h.removeFilter(drop_dataset_errors)


def _start_run_dir(run_dir: Path, values: dict[str, Any], lock: RunLock) -> list[Path]:
    """Create ``run_dir`` (if needed), take its lock and write ``config.yaml``; returns what was created, for
    :func:`_undo_start`. A run that another process started meanwhile is refused (:class:`RunDirBusy` while it runs,
    "already holds a run" once it has written its config)."""
    created = [] if run_dir.exists() else [run_dir]
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    if (run_dir / "config.yaml").exists():
        raise cfglib.ConfigError(
            f"output_dir {str(run_dir)!r} already holds a run: pass --resume, or set output_dir=<new folder>"
        )
    write_text(run_dir / "config.yaml", cfglib.yaml_dump(values))
    return [run_dir / "config.yaml", run_dir / "eval_before.json", *created]


def _undo_start(run_dir: Path, created: list[Path], lock: RunLock) -> None:
    """Remove what a fresh start wrote before its first step, so the corrected command can run (a run stopped by a
    signal is kept: it resumes). The run's lock is released first: its file would keep a folder this start made."""
    import sys

    if not created or isinstance(sys.exc_info()[1], RunStopped):
        return
    lock.release()
    for p in created:
        if p.is_file():
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
