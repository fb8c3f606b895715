"""The ``apo`` command: ``train``, ``eval``, ``config``, ``compare``, ``plot``.

    apo train [CONFIG] [key=value ...] [--resume]
    apo eval [CONFIG] [key=value ...] [--policy PATH]
    apo config [CONFIG] [key=value ...] [--all]
    apo compare CONFIG --algorithms apo-ess,apo-fixed,... --seeds 0,1,2 [--jobs N] [--devices 0,1] [key=value ...]
    apo plot RUN_DIR [RUN_DIR ...]

CONFIG is a YAML file or the name of a bundled config (``apo/configs/*.yaml``); without it, the embedded default
(offline, CPU: a tiny Llama on 2-digit addition) is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path


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
    from apo.cli.run import eval_kwargs, evaluate, load_inputs

    values = _values(args.items)
    if args.policy:
        values["model"] = args.policy
    cfg = cfglib.build(values)
    reward_fn, model, tokenizer, ds = load_inputs(cfg, "eval")
    result = evaluate(model, tokenizer, ds, reward_fn, **eval_kwargs(cfg))
    print(json.dumps({"model": cfg.model, **result}, indent=2))
    return 0


def cmd_config(args) -> int:
    import torch

    from apo.cli import config as cfglib

    values = _values(args.items)
    unchecked = [k for k in ("bf16", "fp16") if values.get(k) and not torch.cuda.is_available()]
    # TrainingArguments refuses bf16/fp16 without a GPU; print a GPU config here all the same, saying so.
    cfg = cfglib.build({**values, **dict.fromkeys(unchecked, False)})
    text = cfglib.dump(cfg, only_changed=not args.all)
    if unchecked:
        text = yaml_set(text, {k: True for k in unchecked})
        text = f"# {', '.join(unchecked)}: not checked (no GPU on this machine)\n" + text
    print(text, end="")
    return 0


def yaml_set(text: str, updates: dict) -> str:
    import yaml

    data = yaml.safe_load(text)
    data.update(updates)
    return yaml.safe_dump(data, sort_keys=True)


def cmd_compare(args) -> int:
    from apo.cli.compare import compare
    from apo.cli.presets import expand_sweep

    path, pairs = _split_config_and_overrides(args.items)
    out = compare(
        path,
        expand_sweep([a for a in args.algorithms.split(",") if a], args.sweep or []),
        [int(s) for s in args.seeds.split(",") if s],
        pairs,
        out_dir=args.out,
        jobs=args.jobs,
        devices=[d for d in args.devices.split(",") if d] if args.devices else None,
    )
    print(f"comparison written to {out}")
    return 0


def cmd_plot(args) -> int:
    from apo.cli.compare import plot_comparison

    out = plot_comparison([Path(p) for p in args.run_dirs], out_dir=args.out)
    print(f"figures and table written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy; writes a run directory")
    t.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="mean reward of a policy on the held-out prompts")
    e.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    e.add_argument("--policy", help="model folder to evaluate (default: the config's model)")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("config", help="print the resolved config")
    c.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    c.add_argument("--all", action="store_true", help="print every field, not only the ones that differ from defaults")
    c.set_defaults(fn=cmd_config)
    m = sub.add_parser("compare", help="train several algorithms x seeds and compare them")
    m.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    m.add_argument("--algorithms", default="apo-ess,apo-fixed,apo-guarded,gspo,adpo,grpo")
    m.add_argument("--seeds", default="0,1,2")
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
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--out", default=None)
    pl.set_defaults(fn=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
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
    setup()
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


def setup() -> None:
    """Logging and warnings of an ``apo`` process (the command, and each run process of ``apo compare``)."""
    # transformers' renaming of gradient_checkpointing -> activation_checkpointing warns on every TRL config; not
    # actionable for a user of this command.
    warnings.filterwarnings("ignore", message=r".*(gradient|is_gradient)_checkpointing.*", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
