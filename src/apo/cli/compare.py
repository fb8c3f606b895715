"""`apo compare` and `apo plot`: train several algorithms x seeds, then compare them in figures and a table.

A comparison folder holds one run directory per (preset, seed), named ``<preset>-seed<k>`` (see
:mod:`apo.cli.run_folder` for what a run directory holds), and::

    curves.png   mean training reward per step over seeds, with a 95% t-interval (cf. the paper's Figure 1)
    alpha.png    alpha, ESS / G, confidence c_t, p_theta entropy and max |u| of APO / ADPO; token entropy of all
    table.md     per preset: held-out reward before / after, best training reward, steps to a threshold,
                 final token entropy, wall time; mean +- 95% half-width over seeds
    table.json   the same numbers, and every per-seed value, machine-readable
    compare.json the runs of the last `apo compare` call (with the device and log of each run in its own process)
                 and the call's wall time
    <run>.log    stdout and stderr of a run trained in its own process (``jobs > 1``)

The figures and tables are drawn by :mod:`apo.cli.plots` from saved files only, so ``apo plot`` redraws them without
training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from apo.cli import config as cfglib
from apo.cli.presets import preset, split_variant
from apo.cli.process import RunStopped, StopSignals, children_die_with_this_process, die_with_parent, setup
from apo.cli.run_folder import refuse_foreign, saved_config_diff

logger = logging.getLogger("apo")


RUN_NAME_MAX = 200
"""Longest run directory name (file systems allow 255 bytes; ``.<name>.json`` and ``<name>.log`` sit beside it)."""


def run_name(preset_name: str, seed: int) -> str:
    """The run directory name of one (preset, seed): ``apo-ess-seed0``, ``apo-fixed@alpha=0.35-seed0``. Any other
    character of a variant or sweep value is percent-encoded (``grpo@task=data%2Fa.jsonl-seed0`` for the value
    ``data/a.jsonl``), so that distinct values give distinct names, each a single folder name
    (:func:`apo.cli.plots.run_label` decodes it); a name longer than :data:`RUN_NAME_MAX` keeps its start and ends in
    a hash of the whole."""
    import hashlib
    from urllib.parse import quote

    name = f"{quote(preset_name, safe='@=,+')}-seed{seed}"
    if len(name) > RUN_NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: RUN_NAME_MAX - 30]}~{digest}-seed{seed}"
    return name


def default_out_dir(config_path: str | Path | None) -> Path:
    """``runs/compare-<config stem>`` (``runs/compare-default`` for the embedded default)."""
    return Path("runs") / f"compare-{Path(config_path).stem if config_path else 'default'}"


class CompareError(RuntimeError):
    """A run of a comparison failed; the message names the runs and their log files."""


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's own entries where it is
    set (indices or UUIDs, as the scheduler gave them), else ``"0"`` .. ``str(torch.cuda.device_count() - 1)``."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_workers(jobs: int | None, devices: list[str] | None, visible: list[str]) -> list[str | None]:
    """The device of each worker slot: ``len(result)`` runs go at once, each in its own process that sees only its
    slot's device (``CUDA_VISIBLE_DEVICES`` set to it); ``[None]`` means one run at a time in this process, with the
    environment as it is.

    - ``devices`` given (``--devices``, written as they are into ``CUDA_VISIBLE_DEVICES``): one slot per device;
      ``jobs``, if given, must equal ``len(devices)``.
    - else with several ``visible`` GPUs (:func:`visible_gpus`; empty for a CPU config): one slot per visible GPU,
      or the first ``jobs`` of them; ``jobs=1``: this process.
    - else ``jobs`` slots (default 1) without a device: processes that share the CPU (or the one GPU).

    Raises:
        ConfigError: ``jobs < 1``; ``jobs`` different from ``len(devices)``; more ``jobs`` than visible GPUs.
    """
    if jobs is not None and jobs < 1:
        raise cfglib.ConfigError(f"--jobs must be >= 1, got {jobs}")
    if devices:
        if jobs is not None and jobs != len(devices):
            raise cfglib.ConfigError(
                f"--jobs {jobs} with --devices {','.join(devices)}: one run per device at a time; drop --jobs or "
                "list one device per job"
            )
        return list(devices)
    if len(visible) > 1:
        if jobs == 1:
            return [None]
        if jobs is not None and jobs > len(visible):
            raise cfglib.ConfigError(
                f"--jobs {jobs} but {len(visible)} GPUs are visible ({','.join(visible)}): at most one run per GPU; "
                "lower --jobs, or pass --devices"
            )
        return visible[: jobs or len(visible)]
    return [None] * (jobs or 1)


def compare(
    config_path: str | Path | None,
    algorithms: list[str],
    seeds: list[int],
    overrides: list[str],
    out_dir: str | Path | None = None,
    *,
    jobs: int | None = None,
    devices: list[str] | None = None,
    command: list[str] | None = None,
    into_existing: bool = False,
) -> Path:
    """Train every preset in ``algorithms`` with every seed in ``seeds``, then draw the comparison
    (:func:`plot_comparison`); returns the comparison folder.

    Settings of one run, lowest to highest precedence: the config file (``None``: the embedded default), the preset
    (:data:`apo.cli.presets.PRESETS`) or preset variant (``apo-fixed@alpha=0.35``, :func:`apo.cli.presets.preset`;
    a key set both by a variant and in ``overrides`` is an error), the ``key=value`` ``overrides``, then ``seed=k`` and
    ``output_dir=<out>/<preset>-seed<k>``. The seed sets the draw of training prompts, the sampling and the
    optimizer's randomness; held-out prompts and their sampling seed (``eval_seed``) are the same for every run, so
    ``eval_before.json`` is the same starting point everywhere.

    Every setting is validated before the first run starts. A run whose ``summary.json`` exists is finished and is
    skipped; a run directory without it (a killed comparison) is resumed from its last checkpoint, so rerunning the
    same command completes a comparison. Either way its saved ``config.yaml`` must equal the requested settings.

    Where runs go (:func:`plan_workers`): with one worker slot (the default on a CPU or a single GPU), one after
    another in this process, seed by seed (every algorithm with seed 0, then seed 1, ...). With several slots
    (``jobs``, ``devices``, or a GPU config on a machine with several GPUs), each run is its own process
    (``python -m apo.cli.compare``), at most one per slot, with ``CUDA_VISIBLE_DEVICES`` set to the slot's device,
    and its output in ``<out>/<run>.log``. After a failed run no new run starts; the running ones finish, the
    figures are not drawn, and :class:`CompareError` names the failed runs and their logs.

    Stops and deaths: every run process dies with this one (``PR_SET_PDEATHSIG`` on Linux, SIGKILL included) and runs
    in its own session, so a Ctrl-C reaches this process only. The first SIGINT / SIGTERM is passed to the running
    runs, which stop at their next optimizer step with a checkpoint; no new run starts, and
    :class:`apo.cli.process.RunStopped` (exit status 128 + signal number) names ``command`` (the command line that
    started the comparison) as the one that resumes it. A second signal ends everything at once.

    Raises:
        ConfigError: an unknown preset (listing the valid ones), a malformed variant, an invalid override or
            ``jobs`` / ``devices`` (``devices`` with a CPU config), ``out`` an existing folder with other files that
            is not a comparison (without ``into_existing``), ``seed`` or ``output_dir`` set by an override or a
            variant (``--seeds`` and ``--out`` set them), a repeated algorithm or seed, or a run directory
            (finished or not) whose saved config differs from the one requested.
        CompareError: a run failed in its own process.
        RunStopped: stopped by SIGINT / SIGTERM.
    """
    if not algorithms or not seeds:
        raise cfglib.ConfigError("apo compare needs at least one algorithm (--algorithms) and one seed (--seeds)")
    for flag, items in (("--algorithms", algorithms), ("--seeds", seeds)):
        repeated = sorted({str(x) for x in items if items.count(x) > 1})
        if repeated:
            raise cfglib.ConfigError(f"{flag} lists {', '.join(repeated)} more than once")
    out = Path(out_dir) if out_dir else default_out_dir(config_path)
    user = cfglib.parse_overrides(list(overrides))
    for key, flag in (("seed", "--seeds"), ("output_dir", "--out")):
        set_by = ["the command line"] if key in user else []
        set_by += [f"the variant {name!r}" for name in algorithms if key in split_variant(name)[1]]
        if set_by:
            raise cfglib.ConfigError(
                f"apo compare sets {key} of every run ({flag}): {key} set by {set_by[0]} would be replaced; "
                f"use {flag} instead"
            )
    plan = []
    bases = {name: preset(name) for name in algorithms}  # every name checked before anything else
    for name in algorithms:
        clash = sorted(set(split_variant(name)[1]) & set(user))
        if clash:
            raise cfglib.ConfigError(
                f"{', '.join(clash)} set both by the variant {name!r} and on the command line: set it in one place"
            )
    for seed in seeds:  # seed-major: a comparison stopped part-way has the same seeds for every algorithm
        for name, base in bases.items():
            run_dir = out / run_name(name, seed)
            values = cfglib.resolve_values(config_path, {**base, **user, "seed": seed, "output_dir": str(run_dir)})
            cfglib.build(values)  # the config's own checks, before anything is trained
            if (run_dir / "config.yaml").exists():  # a finished run is skipped, an unfinished one resumed
                diff = saved_config_diff(run_dir, values)
                if diff:
                    state = "finished" if _is_finished(run_dir) else "unfinished"
                    raise cfglib.ConfigError(
                        f"{run_dir} holds a {state} run whose config differs in {diff}: rerun with the same "
                        "settings, or pass --out <new folder>"
                    )
            plan.append((run_dir, values))
    # a comparison folder (compare.json, or a run or run spec of this plan) is rerun as it is: finished runs skipped
    started = any((d / "config.yaml").exists() or (out / f".{d.name}.json").exists() for d, _ in plan)
    if not into_existing and not started and not (out / "compare.json").exists():
        refuse_foreign(out, "--out", "comparison")
    on_gpu = not plan[0][1].get("use_cpu", False)
    if devices and not on_gpu:
        raise cfglib.ConfigError(
            f"--devices {','.join(devices)} with a CPU config (use_cpu: true): the runs would not use them; drop "
            "--devices (--jobs N runs N at once on the CPU), or set use_cpu=false on a machine with GPUs"
        )
    visible = visible_gpus() if on_gpu and not devices else []
    slots = plan_workers(jobs, devices, visible)

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"config": str(config_path) if config_path else None, "overrides": list(overrides)}
    log["workers"] = len(slots)
    again = shlex.join(command) if command else "the same apo compare command"
    urgent = "apo: stopped at once by a second {signal}; resume with: " + again.replace("{", "{{").replace("}", "}}")
    with StopSignals(urgent) as stop:
        if len(slots) == 1 and slots[0] is None:
            log["runs"] = _run_in_process(plan, stop, again)
        else:
            log["runs"] = _run_in_workers(plan, slots, out, stop)
    log["wall_time_s"] = time.time() - t0
    (out / "compare.json").write_text(json.dumps(log, indent=2) + "\n")
    if stop.requested:
        left = sum(r["status"] in ("stopped", "not started") for r in log["runs"])
        raise RunStopped(
            f"comparison stopped by {stop.name} ({left} of {len(plan)} runs unfinished, each resumable); "
            f"resume with: {again}",
            stop.code,
        )
    failed = [r for r in log["runs"] if r["status"] == "failed"]
    if failed:
        raise CompareError(
            f"{len(failed)} of {len(plan)} runs failed: "
            + "; ".join(f"{r['run']} (exit {r['returncode']}, see {r['log']})" for r in failed)
            + ". Fix the cause and rerun the same command: finished runs are skipped, the others resumed"
        )
    return plot_comparison([run_dir for run_dir, _ in plan], out_dir=out)


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def _run_in_process(plan: list[tuple[Path, dict]], stop: StopSignals, again: str) -> list[dict]:
    from apo.cli.run import train  # noqa: PLC0415 - torch and trl load only when something trains

    runs = []
    for i, (run_dir, values) in enumerate(plan, 1):
        if _is_finished(run_dir):
            logger.info("[%d/%d] %s: finished earlier, skipped", i, len(plan), run_dir)
            runs.append({"run": run_dir.name, "status": "skipped"})
            continue
        if stop.requested:  # a signal between two runs
            runs.append({"run": run_dir.name, "status": "not started"})
            continue
        resume = (run_dir / "config.yaml").exists()
        logger.info("[%d/%d] %s: %s", i, len(plan), run_dir, "resuming" if resume else "training")
        t_run = time.time()
        try:
            train(values, resume=resume)
        except RunStopped as e:  # train's own handler took the signal: the comparison stops with it
            stop.signum = e.code - 128
            runs.append({"run": run_dir.name, "status": "stopped", "returncode": e.code})
            continue
        runs.append(
            {"run": run_dir.name, "status": "resumed" if resume else "trained", "wall_time_s": time.time() - t_run}
        )
    return runs


def _run_in_workers(
    plan: list[tuple[Path, dict]], slots: list[str | None], out: Path, stop: StopSignals
) -> list[dict]:
    """Run ``plan`` in child processes, at most one per slot; returns one record per run, in plan order."""
    records: dict[str, dict] = {}
    todo = []
    for run_dir, values in plan:
        if _is_finished(run_dir):
            records[run_dir.name] = {"run": run_dir.name, "status": "skipped"}
        else:
            todo.append((run_dir, values))
    free = list(range(len(slots)))
    running: dict[int, tuple[subprocess.Popen, Path, dict, float, Any]] = {}
    try:  # SIGHUP (a closed terminal) is one of the stop signals: passed on like SIGTERM
        _schedule(todo, running, free, slots, out, records, stop)
    finally:  # an interrupted comparison leaves no training process behind (a rerun resumes the runs)
        for proc, *_ in running.values():
            proc.terminate()  # SIGTERM: the run stops at its next step, with a checkpoint
        for proc, _, _, _, log_file in running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):  # bounded even for a process stuck in the kernel
                    proc.wait(timeout=10)
            log_file.close()
    for run_dir, _ in todo:  # not started after a failure or a stop
        records[run_dir.name] = {"run": run_dir.name, "status": "not started"}
    return [records[run_dir.name] for run_dir, _ in plan]


def _schedule(todo, running, free, slots, out, records, stop: StopSignals) -> None:
    """Start runs from ``todo`` on free slots and collect finished ones into ``records`` until none is left or
    running (no new start after a failure or a stop signal, which is passed on to the running runs)."""
    halt = False
    passed_on = False
    while todo or running:
        if stop.requested and not passed_on:
            halt = passed_on = True
            for proc, run_dir, *_ in running.values():
                logger.info("%s: passing %s to process %d", run_dir, stop.name, proc.pid)
                proc.send_signal(stop.signum)
        while todo and free and not halt:
            run_dir, values = todo.pop(0)
            slot = free.pop(0)
            resume = (run_dir / "config.yaml").exists()
            spec = out / f".{run_dir.name}.json"
            spec.write_text(json.dumps({"values": values, "resume": resume, "parent_pid": os.getpid()}))
            env = dict(os.environ)
            if slots[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = slots[slot]
            log_path = out / f"{run_dir.name}.log"
            log_file = open(log_path, "a")  # noqa: SIM115 - closed when the process ends
            cmd = [sys.executable, "-m", "apo.cli.compare", str(spec)]
            # own session: a Ctrl-C in the terminal reaches this process, which passes it on once
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            logger.info(
                "%s: %s in process %d (device %s), log %s",
                run_dir,
                "resuming" if resume else "training",
                proc.pid,
                slots[slot] if slots[slot] is not None else "-",
                log_path,
            )
            running[slot] = (proc, run_dir, {"resume": resume, "log": str(log_path)}, time.time(), log_file)
        if not running:
            break
        time.sleep(0.2)
        for slot, (proc, run_dir, info, t_run, log_file) in list(running.items()):
            if proc.poll() is None:
                continue
            log_file.close()
            del running[slot]
            free.append(slot)
            rec = {
                "run": run_dir.name,
                "device": slots[slot],
                "log": info["log"],
                "wall_time_s": time.time() - t_run,
            }
            if proc.returncode == 0:
                rec["status"] = "resumed" if info["resume"] else "trained"
                (out / f".{run_dir.name}.json").unlink(missing_ok=True)
                logger.info("%s: done in %.0f s", run_dir, rec["wall_time_s"])
            elif stop.requested and proc.returncode in (129, 130, 143):
                rec.update(status="stopped", returncode=proc.returncode)
                logger.info("%s: stopped (exit %d), resumable", run_dir, proc.returncode)
            else:
                rec.update(status="failed", returncode=proc.returncode)
                halt = True
                logger.error("%s failed (exit %d), see %s", run_dir, proc.returncode, info["log"])
            records[run_dir.name] = rec


def plot_comparison(run_dirs: list[Path], out_dir: str | Path | None = None, **kw) -> Path:
    """Draw ``curves.png``, ``alpha.png``, ``table.md`` and ``table.json`` from saved run directories (a folder that
    holds run directories stands for all of them), and the coverage files of :func:`apo.cli.coverage.write_coverage`
    (``passk.png``, ``coverage.md``, ``coverage.json``: runs that record pass@k); returns the output folder (default:
    the runs' common parent). Keyword arguments go to :func:`apo.cli.plots.comparison_table` (``window``,
    ``threshold``)."""
    from apo.cli.coverage import write_coverage
    from apo.cli.plots import find_runs, group_runs, write_comparison

    runs = find_runs(run_dirs)
    out = write_comparison(runs, out_dir, **kw)
    write_coverage(group_runs(runs), out)
    return out


def _worker(spec_path: str) -> int:
    """Child process of :func:`compare`: train the one run described in the JSON file ``spec_path``; dies with the
    comparison (see :func:`apo.cli.process.die_with_parent`). Exit status: 0; 1 when the run failed (its reward
    failed on every completion: one line in its log); 128 + signal number when stopped."""
    spec = json.loads(Path(spec_path).read_text())
    die_with_parent(spec.get("parent_pid"))
    setup()
    logger.info("CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    from apo.cli.run import RunFailed, train

    children_die_with_this_process()
    try:
        train(spec["values"], resume=spec["resume"])
    except RunStopped as e:
        print(f"apo: {e}", file=sys.stderr, flush=True)
        return e.code
    except RunFailed as e:
        print(f"apo: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
