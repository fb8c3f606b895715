"""The apo command: train, eval, config, compare, plot.

    apo train [CONFIG] [key=value ...] [--resume]
    apo eval [CONFIG] [key=value ...] [--policy PATH]
    apo config [CONFIG] [key=value ...] [--all]
    apo compare CONFIG --algorithms apo-ess,apo-fixed,... --seeds 0,1,2 [--jobs N] [--devices 0,1] [key=value ...]
    apo plot RUN_DIR [RUN_DIR ...]

CONFIG is a YAML file or the name of a bundled config (apo/configs/*.yaml); without it, the embedded default
(offline, CPU: a tiny Llama on 2-digit addition) is used.

Exit status: 0 done (also: --resume of a finished run, which changes nothing); 1 a run of apo compare failed; 2 a
configuration or input mistake (one line on stderr naming the key, before any work); 130 / 143 stopped by SIGINT /
SIGTERM (at a step boundary, after a checkpoint; the one line on stderr gives the command that resumes).

This module imports the other CLI modules, never the other way round (shared process helpers live in
apo.cli.process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from apo.cli.process import RunStopped, children_die_with_this_process, setup

__all__ = ["build_parser", "main", "setup"]

CONFIG_KEYS_HINT = "Every config key, with its type, default, allowed range and help: apo config --all"


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _values(items: list[str]):
    from apo.cli import config as cfglib

    path, pairs = _split_config_and_overrides(items)
    return cfglib.resolve_values(path, cfglib.parse_overrides(pairs))


def cmd_train(args) -> int:
    from apo.cli.run import train

    run_dir = train(_values(args.items), resume=args.resume)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    return 0


def cmd_eval(args) -> int:
    from apo.cli import config as cfglib
    from apo.cli.run import eval_kwargs, evaluate, load_inputs, loading_inputs

    values = _values(args.items)
    if args.policy:
        values["model"] = args.policy
    cfg = cfglib.build(values)
    with loading_inputs(cfg):
        reward_fn, model, tokenizer, ds = load_inputs(cfg, "eval")
    result = {"model": cfg.model, **evaluate(model, tokenizer, ds, reward_fn, **eval_kwargs(cfg))}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("prompt_")}, indent=2))
    return 0


def cmd_config(args) -> int:
    import torch

    from apo.cli import config as cfglib

    values = _values(args.items)
    unchecked = [k for k in ("bf16", "fp16") if values.get(k) and not torch.cuda.is_available()]
    # TrainingArguments refuses bf16/fp16 without a GPU; print a GPU config here all the same, saying so.
    cfg = cfglib.build({**values, **dict.fromkeys(unchecked, False)})
    if args.all:
        for k in unchecked:
            setattr(cfg, k, True)
        text = cfglib.describe(cfg)
    else:
        text = yaml_set(cfglib.dump(cfg), dict.fromkeys(unchecked, True)) if unchecked else cfglib.dump(cfg)
    if unchecked:
        text = f"# {', '.join(unchecked)}: not checked (no GPU on this machine)\n" + text
    print(text, end="")
    return 0


def yaml_set(text: str, updates: dict) -> str:
    import yaml

    data = yaml.safe_load(text)
    data.update(updates)
    return yaml.safe_dump(data, sort_keys=True)


def _seed(text: str) -> int:
    from apo.cli.config import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not an integer; pass e.g. --seeds 0,1,2") from None


def cmd_compare(args) -> int:
    from apo.cli.compare import compare
    from apo.cli.presets import expand_sweep

    path, pairs = _split_config_and_overrides(args.items)
    out = compare(
        path,
        expand_sweep([a for a in args.algorithms.split(",") if a], args.sweep or []),
        [_seed(s) for s in args.seeds.split(",") if s],
        pairs,
        out_dir=args.out,
        jobs=args.jobs,
        devices=[d for d in args.devices.split(",") if d] if args.devices else None,
        command=["apo", *args.argv],
    )
    print(f"comparison written to {out}")
    return 0


def cmd_plot(args) -> int:
    from apo.cli.compare import plot_comparison
    from apo.cli.config import ConfigError

    for p in args.run_dirs:
        if not Path(p).exists():
            raise ConfigError(f"apo plot: {p!r} does not exist; pass run directories or the folder that holds them")
    try:
        out = plot_comparison([Path(p) for p in args.run_dirs], out_dir=args.out)
    except FileNotFoundError as e:
        raise ConfigError(f"apo plot: {e}") from None
    print(f"figures and table written to {out}")
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
    t.set_defaults(fn=cmd_train)
    raw = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser(
        "eval", help="mean reward of a policy on the held-out prompts", epilog=CONFIG_KEYS_HINT, formatter_class=raw
    )
    e.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    e.add_argument("--policy", help="model folder to evaluate (default: the config's model)")
    e.add_argument(
        "--out",
        metavar="FILE",
        help="also write the result, with the per-prompt mean rewards (prompt_rewards), to FILE as JSON; two such "
        "files of the same prompts give a paired interval of the gain (apo.cli.run.reward_gain)",
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
    m.set_defaults(fn=cmd_compare)
    pl = sub.add_parser("plot", help="redraw comparison figures and table from saved run directories")
    pl.add_argument("run_dirs", nargs="+", help="run directories, or folders that hold them")
    pl.add_argument("--out", default=None, help="output folder (default: the runs' common parent)")
    pl.set_defaults(fn=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``apo`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (see the module
    docstring). Every anticipated failure is one line on stderr, ``apo: error: ...``."""
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
    from apo.cli.compare import CompareError
    from apo.cli.config import ConfigError

    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"apo: error: {e}", file=sys.stderr)
        return 2
    except CompareError as e:
        print(f"apo: error: {e}", file=sys.stderr)
        return 1
    except RunStopped as e:
        print(f"apo: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("apo: interrupted by SIGINT", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
