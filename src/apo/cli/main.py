"""The apo command: train, eval, config, compare, plot.

    apo train [CONFIG] [key=value ...] [--resume]
    apo eval [CONFIG] [key=value ...] [--policy PATH]
    apo config [CONFIG] [key=value ...] [--all]
    apo compare CONFIG --algorithms apo-ess,apo-fixed,... --seeds 0,1,2 [--jobs N] [--devices 0,1] [key=value ...]
    apo plot RUN_DIR [RUN_DIR ...]
    apo merge ADAPTER_DIR OUT_DIR

CONFIG is a YAML file or the name of a bundled config (apo/configs/*.yaml); without it, the embedded default
(offline, CPU: a tiny Llama on 2-digit addition) is used.

Exit status: 0 done (also: --resume of a finished run, which changes nothing); 1 a run failed (apo compare: one of
its runs; apo train: no completion could be scored, one line giving the reason), or a file could not be written
(permissions, a read-only or full disk; one line naming it); 2 a configuration or input mistake (one line on stderr
naming the key, before any work; output locations are checked then too); 129 / 130 / 143 stopped by SIGHUP / SIGINT /
SIGTERM (at a step boundary, after a checkpoint; the one line on stderr gives the command that resumes).

This module imports the other CLI modules, never the other way round (shared process helpers live in
apo.cli.process).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from apo.cli import ranks
from apo.cli.process import RunStopped, children_die_with_this_process, die_with_parent, setup

__all__ = ["build_parser", "main", "setup"]

UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR}
"""``OSError`` numbers of a location that cannot be read or written: said in one line by :func:`main`."""
WRITE_ONLY_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}
"""Those of them only a write can meet (the line says "could not write"; the others, "could not access")."""

CONFIG_KEYS_HINT = "Every config key, with its type, default, allowed range and help: apo config --all"


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _values(items: list[str]):
    from apo.cli import config as cfglib

    path, pairs = _split_config_and_overrides(items)
    return cfglib.resolve_values(path, cfglib.parse_overrides(pairs))


def emit(text: str) -> None:
    """Print the result of a finished command on stdout. A reader that has gone (``apo train ... | head -1``) does
    not turn the finished work into a failure: the rest of the output is dropped quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again


def _own_run_folder(args, values: dict) -> dict:
    """``apo train RUN/config.yaml --resume`` resumes RUN from any working folder: a run's saved ``output_dir`` may
    be relative to where it started, so the folder of the saved config is the run (unless ``output_dir=`` is set on
    the command line)."""
    path, pairs = _split_config_and_overrides(args.items)
    if not args.resume or path is None or any(p.startswith("output_dir=") for p in pairs):
        return values
    config = Path(path)
    if (
        config.name == "config.yaml"
        and config.is_file()
        and Path(values["output_dir"]).resolve() != config.parent.resolve()
    ):
        return {**values, "output_dir": str(config.parent)}
    return values


def cmd_train(args) -> int:
    from apo.cli.run import train

    run_dir = train(_own_run_folder(args, _values(args.items)), resume=args.resume, into_existing=args.into_existing)
    if not ranks.is_main():  # rank 0 wrote the run and prints its summary
        return 0
    summary = json.loads((run_dir / "summary.json").read_text())
    emit(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    return 0


def cmd_eval(args) -> int:
    from apo.cli import config as cfglib
    from apo.cli.inputs import load_inputs, loading_inputs
    from apo.cli.run import eval_kwargs, exit_status
    from apo.tasks.evaluate import evaluate

    if args.policy and not Path(args.policy).expanduser().is_dir():
        raise cfglib.ConfigError(
            f"--policy {args.policy!r}: no such folder; pass a model folder (e.g. runs/<run>/final), or a hub id as "
            "model=<id>"
        )
    path, pairs = _split_config_and_overrides(args.items)
    saved = run_config_of(args.policy) if args.policy and path is None else None
    if saved is not None:
        logging.getLogger("apo").info(
            "evaluating %s with its run's saved config %s (task, completion length, sampling); pass a CONFIG to use "
            "another",
            args.policy,
            saved,
        )
    values = cfglib.resolve_values(saved or path, cfglib.parse_overrides(pairs))
    if args.out:
        cfglib.check_output_file(args.out, "--out")  # before the evaluation, whose result it holds
    if args.policy:
        values["model"] = args.policy
    cfg = cfglib.build(values)  # with a launcher, this starts the process group (TrainingArguments)
    if cfg.use_vllm:
        logging.getLogger("apo").info("use_vllm applies to training: apo eval samples with transformers' generate")
    with ranks.agreed(exit_status), loading_inputs(cfg):
        reward_fn, model, tokenizer, ds = load_inputs(cfg, "eval")
    result = {"model": cfg.model, **evaluate(model, tokenizer, ds, reward_fn, **eval_kwargs(cfg))}
    if not ranks.is_main():  # each rank evaluated its share of the batches; rank 0 writes and prints the whole
        return 0
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    emit(json.dumps({k: v for k, v in result.items() if not k.startswith("prompt_")}, indent=2))
    return 0


def run_config_of(policy: str) -> Path | None:
    """The saved ``config.yaml`` of the run that ``policy`` comes from (``RUN/final``, ``RUN/checkpoint-N``, or
    ``RUN`` itself), or ``None`` when ``policy`` is not inside a run directory."""
    for folder in (Path(policy), Path(policy).parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def cmd_config(args) -> int:
    import torch

    from apo.cli import config as cfglib

    values = _values(args.items)
    unchecked = [k for k in ("bf16", "fp16") if values.get(k) and not torch.cuda.is_available()]
    # TrainingArguments refuses bf16/fp16 without a GPU; print a GPU config here all the same, saying so.
    cfg = cfglib.build({**values, **dict.fromkeys(unchecked, False)})
    text = cfglib.describe(cfg, values) if args.all else cfglib.dump(cfg, values)
    if unchecked:
        text = f"# {', '.join(unchecked)}: not checked (no GPU on this machine)\n" + text
    emit(text.rstrip("\n"))
    return 0


def _seed(text: str) -> int:
    from apo.cli.config import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not an integer; pass e.g. --seeds 0,1,2") from None


def cmd_compare(args) -> int:
    from apo.cli.compare import compare
    from apo.cli.config import ConfigError, check_folder
    from apo.cli.presets import expand_sweep

    if ranks.world_size() > 1:
        raise ConfigError(
            "apo compare starts a process per run itself (--jobs, --devices): run it directly, not under torchrun or "
            "accelerate launch"
        )
    path, pairs = _split_config_and_overrides(args.items)
    if args.out:
        check_folder(args.out, "--out", "pass --out <a folder>")
    out = compare(
        path,
        expand_sweep([a for a in args.algorithms.split(",") if a], args.sweep or []),
        [_seed(s) for s in args.seeds.split(",") if s],
        pairs,
        out_dir=args.out,
        jobs=args.jobs,
        devices=[d for d in args.devices.split(",") if d] if args.devices else None,
        command=["apo", *args.argv],
        into_existing=args.into_existing,
    )
    emit(f"comparison written to {out}")
    return 0


def cmd_plot(args) -> int:
    from apo.cli.compare import plot_comparison
    from apo.cli.config import ConfigError, check_folder

    for p in args.run_dirs:
        if not Path(p).exists():
            raise ConfigError(f"apo plot: {p!r} does not exist; pass run directories or the folder that holds them")
    if args.out:
        check_folder(args.out, "apo plot: --out", "pass --out <a folder>")
    try:
        out = plot_comparison([Path(p) for p in args.run_dirs], out_dir=args.out)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as e:  # no run there; a damaged metrics.jsonl (apo.cli.plots.read_metrics)
        raise ConfigError(f"apo plot: {e}") from None
    emit(f"figures and table written to {out}")
    return 0


def cmd_merge(args) -> int:
    from apo.cli.config import ConfigError
    from apo.cli.lora import LoraError, merge

    try:
        out = merge(args.adapter, args.out)
    except LoraError as e:
        raise ConfigError(str(e)) from None
    emit(f"merged model written to {out}")
    return 0


def _version() -> str:
    from apo import __version__

    return f"apo {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The ``apo`` argument parser (help texts are plain text: no reStructuredText markup)."""
    from apo.cli.presets import PRESETS

    p = argparse.ArgumentParser(prog="apo", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a policy; writes a run directory",
        description="Train a policy on a config and write a run directory (output_dir).",
        epilog=CONFIG_KEYS_HINT + "\n\nStop with Ctrl-C or SIGTERM: the run stops at the next step, saves a\n"
        "checkpoint and prints the command that resumes it; a second signal stops at once.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its newest intact checkpoint (a finished run is left as it is)",
    )
    t.add_argument(
        "--into-existing",
        action="store_true",
        help="write the run into output_dir although it is a folder with other files (files named as a run's, "
        "final/, curves.png, summary.json..., are replaced); without it such a folder is refused",
    )
    t.set_defaults(fn=cmd_train)
    raw = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser(
        "eval", help="mean reward of a policy on the held-out prompts", epilog=CONFIG_KEYS_HINT, formatter_class=raw
    )
    e.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    e.add_argument(
        "--policy",
        help="model folder to evaluate (default: the config's model); a run's final/ or checkpoint-N/ is evaluated "
        "with that run's saved config.yaml unless a CONFIG is given",
    )
    e.add_argument(
        "--out",
        metavar="FILE",
        help="also write the result, with the per-prompt mean rewards (prompt_rewards), to FILE as JSON; two such "
        "files of the same prompts give a paired interval of the gain (apo.tasks.evaluate.reward_gain)",
    )
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("config", help="print the resolved config", epilog=CONFIG_KEYS_HINT, formatter_class=raw)
    c.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    c.add_argument(
        "--all",
        action="store_true",
        help="print every key, one per line, with its value, type, default, allowed range and help (default: only "
        "the keys that differ from their defaults)",
    )
    c.set_defaults(fn=cmd_config)
    m = sub.add_parser(
        "compare",
        help="train several algorithms x seeds and compare them",
        epilog="Stop with Ctrl-C or SIGTERM: running runs stop at their next step and save a checkpoint;\n"
        "rerun the same command to resume (finished runs are skipped).\n\n" + CONFIG_KEYS_HINT,
        formatter_class=raw,
    )
    m.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    m.add_argument(
        "--algorithms",
        default="apo-ess,apo-fixed,apo-guarded,gspo,adpo,grpo",
        help=f"comma-separated presets ({', '.join(PRESETS)}) or variants of them, e.g. apo-fixed@alpha=0.35 "
        "(default: %(default)s)",
    )
    m.add_argument(
        "--seeds",
        default="0,1,2",
        help="comma-separated integer seeds; every algorithm runs once per seed (default: %(default)s)",
    )
    m.add_argument("--out", default=None, help="output folder (default: runs/compare-<config>)")
    m.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2,...",
        help="run every algorithm once per value of KEY, as the variants ALGORITHM@KEY=V (repeatable: the product), "
        "e.g. --sweep updates_per_rollout=1,4,16; adds sweep-KEY.png (held-out reward against KEY)",
    )
    m.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at once, each in its own process (default: one per GPU where several are visible, else 1; "
        "1: one after another in this process)",
    )
    m.add_argument(
        "--devices",
        default=None,
        help="GPUs, one run at a time on each, each written as given into its runs' CUDA_VISIBLE_DEVICES, e.g. "
        "0,1,2,3 (default on a GPU config: the entries of CUDA_VISIBLE_DEVICES, else every GPU)",
    )
    m.add_argument(
        "--into-existing",
        action="store_true",
        help="write the comparison into --out although it is a folder with other files (without it such a folder "
        "is refused)",
    )
    m.set_defaults(fn=cmd_compare)
    pl = sub.add_parser("plot", help="redraw comparison figures and table from saved run directories")
    pl.add_argument("run_dirs", nargs="+", help="run directories, or folders that hold them")
    pl.add_argument("--out", default=None, help="output folder (default: the runs' common parent)")
    pl.set_defaults(fn=cmd_plot)
    mg = sub.add_parser(
        "merge",
        help="write a LoRA run's adapter merged into its base model as a full model folder",
        description="Merge the LoRA adapter of ADAPTER_DIR (e.g. RUN/final of a use_peft run) into its base model "
        "and write the full model and tokenizer to OUT_DIR (safetensors), loadable as model=OUT_DIR or --policy.",
    )
    mg.add_argument("adapter", metavar="ADAPTER_DIR", help="folder with adapter_config.json (a LoRA run's final/)")
    mg.add_argument("out", metavar="OUT_DIR", help="folder to write the merged model to")
    mg.set_defaults(fn=cmd_merge)
    return p


PEER_GRACE_S = 5.0
"""How long a rank that stays silent about a failure waits before it exits: a launcher ends every rank once one
exits with an error, and the rank that says why must get to print first."""


def _say(error: BaseException, line: str | None) -> None:
    """Print the one line of a failure on stderr, once per launch: by rank 0, or by the rank that alone met it
    (:func:`apo.cli.ranks.speaks`). A silent rank of a launch waits :data:`PEER_GRACE_S` first (or until the launcher
    ends it)."""
    if line is not None and ranks.speaks(error):
        print(line, file=sys.stderr, flush=True)
    elif ranks.world_size() > 1:
        time.sleep(PEER_GRACE_S)


def main(argv: list[str] | None = None) -> int:
    """Run the ``apo`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (see the module
    docstring). Every anticipated failure is one line on stderr, ``apo: error: ...``.

    A process that joined a process group (a rank of ``torchrun``) does not return: it ends through
    :func:`apo.cli.ranks.leave`, whose docstring says why; an unexpected exception there is printed and ends it
    with status 1."""
    try:
        code = _main(argv)
    except Exception:
        if not ranks.group_started():
            raise
        traceback.print_exc()
        code = 1
    if ranks.group_started():
        ranks.leave(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # argparse stops filling a positional list at the first option, so `apo compare CONFIG --seeds 0 key=value`
    # would leave `key=value` unrecognised: overrides may come before, between or after the options.
    args, extra = parser.parse_known_args(argv)
    options = [a for a in extra if a.startswith("-")]
    if options or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(options or extra)}")
    if extra:
        misplaced = [a for a in extra if "=" not in a]
        if misplaced:
            parser.error(
                f"{' '.join(misplaced)}: CONFIG (a file or a bundled config name) comes first, before key=value"
            )
        args.items = [*args.items, *extra]
    args.argv = argv
    setup()
    children_die_with_this_process()  # a killed run leaves no forked worker behind
    if ranks.world_size() > 1:  # a rank ends with its launcher (torchrun starts each in a session of its own)
        die_with_parent(os.getppid())
    from apo.cli.compare import CompareError
    from apo.cli.config import ConfigError
    from apo.cli.run import RunFailed
    from apo.tasks.bounded import close_children

    try:
        return args.fn(args)
    except ranks.PeerFailed as e:  # another process of the launch failed and says why
        _say(e, None)
        return e.code
    except ConfigError as e:
        _say(e, f"apo: error: {e}")
        return 2
    except CompareError as e:
        _say(e, f"apo: error: {e}")
        return 1
    except RunStopped as e:
        _say(e, f"apo: {e}")
        return e.code
    except RunFailed as e:
        _say(e, f"apo: error: {e}")
        return 1
    except KeyboardInterrupt as e:
        _say(e, "apo: interrupted by SIGINT")
        return 130
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        # a location that could not be read or written (permissions, a read-only or full disk): one line, no traceback
        where = f" {e.filename!r}" if e.filename else ""
        verb = "write" if e.errno in WRITE_ONLY_ERRORS else "access"
        _say(e, f"apo: error: could not {verb}{where}: {e.strerror or e}")
        return 1
    finally:
        close_children()  # every reward worker and grader process ends with the command, within seconds


if __name__ == "__main__":
    sys.exit(main())
