"""The run folder of ``apo train``: what it holds, and its lifecycle from the first check to ``summary.json``.

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

:class:`RunFolder` is that lifecycle, in the order a run meets it (rank 0 alone writes; :mod:`apo.cli.ranks`):
:meth:`~RunFolder.open` checks the folder before any work (and, to resume, takes the lock, removes what a killed run
left half-written and drops the metric lines past the checkpoint); :meth:`~RunFolder.start` takes the lock of a fresh
run and writes ``config.yaml``; :meth:`~RunFolder.undo_start` removes what a start that failed before its first step
wrote; :meth:`~RunFolder.save_final` writes ``final/``; :meth:`~RunFolder.finish` writes the last files, or
:meth:`~RunFolder.mark_failed` a failed run's ``summary.json``. The other functions here are the checks behind them
(:func:`refuse_foreign`, :func:`saved_config_diff`, :func:`check_resume_kind`, :func:`check_process_count`), also used
by ``apo compare``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from apo.atomic import write_json, write_text
from apo.cli import config as cfglib
from apo.cli import ranks
from apo.cli.lock import LOCK_NAME, RunDirBusy, RunLock, holder
from apo.cli.process import RunStopped

logger = logging.getLogger("apo")


class RunFolder:
    """The run folder ``path`` of one ``apo train``, its lock, and what its opening found: ``checkpoint`` (the one to
    resume from, or ``None``), ``carried`` (the wall time of the steps a resumed run keeps) and ``created`` (what a
    fresh start wrote, for :meth:`undo_start`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.checkpoint: Path | None = None
        self.carried = 0.0
        self.created: list[Path] = []

    def open(self, values: dict[str, Any], cfg, resume: bool, into_existing: bool) -> tuple[str | None, float, bool]:
        """Rank 0's checks of the run folder before any work: ``(checkpoint to resume from or None, the wall time of
        the kept steps, finished)``, for every rank's :meth:`adopt`. A resume takes the lock here (a fresh run takes
        it once its inputs are loaded, :meth:`start`), drops what a killed run left half-written and the metric lines
        past the checkpoint."""
        cfglib.check_folder(self.path, "config key 'output_dir':", "set output_dir=<a writable folder>")
        if not resume and not into_existing:
            refuse_foreign(self.path, "output_dir")
        if (pid := holder(self.path)) is not None:
            raise RunDirBusy(self.path, pid if pid > 0 else None)
        if not resume:
            files = ("metrics.jsonl", "config.yaml", "eval_before.json")
            leftovers = [n for n in files if self.has(n)] + [p.name for p in self.path.glob("checkpoint-*")]
            if leftovers:
                raise cfglib.ConfigError(
                    f"output_dir {str(self.path)!r} already holds a run: pass --resume, or set output_dir=<new folder>"
                )
            return None, 0.0, False
        if not (self.path / "config.yaml").exists():
            raise cfglib.ConfigError(f"--resume: no run to resume in {self.path} (no config.yaml); drop --resume")
        self.lock.acquire()
        check_resume_kind(self.path, values)
        # the folder being resumed is the run, wherever it was started from (a saved output_dir may be relative), and
        # the thread count is the machine's, not the run's (the math is the same up to float summation order)
        diff = saved_config_diff(self.path, values)
        if "torch_threads" in diff:
            logger.info("--resume with torch_threads=%s (the saved run used another)", values.get("torch_threads"))
        diff = [k for k in diff if k not in RESUME_MAY_DIFFER]
        if diff:
            raise cfglib.ConfigError(f"--resume: the config differs from the saved run in {diff}")
        if is_finished(self.path):
            failed = self.read_json("summary.json").get("failed")
            if failed:
                raise cfglib.ConfigError(f"--resume: {self.path} failed ({failed}); start over with a new output_dir")
            logger.info("%s is finished (summary.json written): nothing to resume, nothing changed", self.path)
            return None, 0.0, True
        remove_leftovers(self.path)
        checkpoint = last_checkpoint(self.path)
        if checkpoint is not None:
            from apo.integrations.trl.precision import checkpoint_weight_note

            check_process_count(checkpoint)
            if note := checkpoint_weight_note(checkpoint, cfg.master_weights):
                logger.warning(note)
        last_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
        carried = truncate_metrics(self.path / "metrics.jsonl", last_step)
        return (None if checkpoint is None else str(checkpoint)), carried, False

    def adopt(self, opened: tuple[str | None, float, bool]) -> bool:
        """Take what rank 0's :meth:`open` found (broadcast to every rank); returns whether the run is finished."""
        checkpoint, self.carried, finished = opened
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        return finished

    def start(self, values: dict[str, Any]) -> None:
        """Create the folder (if needed), take its lock and write ``config.yaml``, noting what it created for
        :meth:`undo_start`. A run that another process started meanwhile is refused (:class:`RunDirBusy` while it
        runs, "already holds a run" once it has written its config)."""
        made = [] if self.path.exists() else [self.path]
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        if (self.path / "config.yaml").exists():
            raise cfglib.ConfigError(
                f"output_dir {str(self.path)!r} already holds a run: pass --resume, or set output_dir=<new folder>"
            )
        write_text(self.path / "config.yaml", cfglib.yaml_dump(values))
        self.created = [self.path / "config.yaml", self.path / "eval_before.json", *made]

    def undo_start(self) -> None:
        """Remove what a fresh start wrote before its first step, so the corrected command can run (a run stopped by a
        signal is kept: it resumes). The run's lock is released first: its file would keep a folder this start made."""
        if not self.created or isinstance(sys.exc_info()[1], RunStopped):
            return
        self.lock.release()
        for p in self.created:
            if p.is_file():
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, data: dict) -> None:
        """``name`` written whole or not at all (:func:`apo.atomic.write_json`)."""
        write_json(self.path / name, data)

    def save_final(self, trainer, tokenizer) -> None:
        """``final/``: the trained model (every rank takes part: a sharded model is gathered) and the tokenizer,
        written under ``final.tmp`` and renamed by rank 0."""
        final, tmp = self.path / "final", self.path / "final.tmp"
        if ranks.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()
        if ranks.is_main():
            tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)

    def mark_failed(self, reason: str, steps: int, wall_time_s: float) -> None:
        """``summary.json`` of a run that trained nothing to trust: ``failed`` (the reason), steps and wall time."""
        self.write_json("summary.json", {"failed": reason, "steps": steps, "wall_time_s": wall_time_s})

    def finish(self, summary: dict, after: dict | None, rows: list[dict]) -> None:
        """``eval_after.json`` (``after``, when evaluated), ``curves.png`` (from the ``metrics.jsonl`` ``rows``) and,
        last, ``summary.json``, which marks the run finished."""
        from apo.cli.plots import plot_run

        if after is not None:
            self.write_json("eval_after.json", after)
        plot_run(self.path, rows=rows)
        self.write_json("summary.json", summary)

    def resume_command(self) -> str:
        return resume_command(self.path)


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


def checkpoint_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def remove_leftovers(run_dir: Path) -> None:
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


def truncate_metrics(path: Path, last_step: int) -> float:
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
