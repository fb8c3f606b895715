"""Bad inputs end in one line before any work; resume is idempotent and survives damaged checkpoints; signals stop
runs cleanly; no process outlives its parent; the CLI's help, version and import graph.

The bad-input and fault classes are listed in ``reliability_cases.py``, which ``docs/reliability.md`` is generated
from (``scripts/reliability_table.py``); :func:`test_the_doc_is_generated_from_the_cases` keeps the two in step.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import psutil
import pytest
from fault_zygote import Zygote, survivors
from reliability_cases import CASES, FAULTS, RESUME, render, run_case

from apo.cli import config as cfglib
from apo.cli.main import build_parser, main
from apo.integrations.trl.checkpoints import verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "src" / "apo" / "cli"
FAST = ["eval_before_after=false", "per_device_train_batch_size=16", "torch_threads=1"]


def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _log_lines(caplog) -> list[str]:
    """The log records as ``apo`` prints them (``LEVEL name: message``, see apo.cli.process.setup)."""
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records]


def _fault(cls: str):
    return next(f for f in FAULTS if f.cls == cls)


# --- bad input: one line, before any work, nothing left behind -------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c.cls}" for i, c in enumerate(CASES)])
def test_bad_input_ends_in_one_line_and_leaves_nothing(case, tmp_path):
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    for rel in case.files:
        before |= {rel, *(str(p) for p in Path(rel).parents if str(p) != ".")}
    code, lines = run_case(case, tmp_path)
    if case.pending and code == 0:
        pytest.xfail(f"pending: {case.pending}")
    assert code == case.code
    assert len(lines) == 1, lines
    assert lines[0].startswith("apo: error: ") and case.expect in lines[0], lines[0]
    after = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert after == before, sorted(after - before)


def test_the_doc_is_generated_from_the_cases(tmp_path):
    messages = []
    for i, case in enumerate(CASES):
        code, lines = run_case(case, tmp_path / str(i))
        messages.append(None if case.pending and code == 0 else lines[0] if lines else "")
    assert sum(m is not None for m in messages) + len(FAULTS) >= 40
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert doc == render(messages), "docs/reliability.md is stale: run python scripts/reliability_table.py"


def test_a_corrected_rerun_after_a_failed_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "output_dir=r", "reward=nothing", "max_steps=1", *FAST]) == 2
    assert not Path("r").exists()
    assert main(["train", "output_dir=r", "reward=arithmetic", "max_steps=1", *FAST]) == 0
    assert _steps(Path("r")) == [1]


def test_a_start_that_fails_at_the_optimizer_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("r").mkdir()
    Path("r/notes.txt").write_text("n")  # a folder that is not a run: written into only with --into-existing
    before = _tree(tmp_path)
    bad = ["lr_scheduler_type=cosine", "lr_scheduler_kwargs={nonsense: 1}"]  # refused when the scheduler is made
    assert main(["train", "output_dir=r", "max_steps=1", *FAST, *bad, "--into-existing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training could not start: TypeError: " in err[0] and "'nonsense'" in err[0]
    assert _tree(tmp_path) == before  # no config.yaml left to refuse the corrected command
    assert main(["train", "output_dir=r", "max_steps=1", *FAST, "--into-existing"]) == 0
    assert _steps(Path("r")) == [1] and Path("r/notes.txt").read_text() == "n"


def test_a_start_that_fails_at_the_optimizer_removes_the_folder_it_made(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = ["lr_scheduler_type=cosine", "lr_scheduler_kwargs={nonsense: 1}"]
    assert main(["train", "output_dir=r", "max_steps=1", *FAST, *bad]) == 2
    assert "training could not start" in capsys.readouterr().err
    assert not Path("r").exists()  # the run lock's file went first, so the folder is empty and removed


def test_a_fork_under_nested_stop_handlers_starts_with_default_signals():
    """apo compare holds a StopSignals around each run's own: when a run's ends, a process forked while the
    comparison's is still active must still start with the default SIGTERM (else it ignores the SIGTERM that ends
    it)."""
    from apo.cli.process import StopSignals

    with StopSignals():
        with StopSignals():
            pass
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # the outer handler is installed
        pid = os.fork()
        if pid == 0:
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_eval_of_a_runs_policy_uses_the_runs_config(tmp_path, monkeypatch, capsys, caplog):
    import apo.cli.inputs as inputslib

    monkeypatch.chdir(tmp_path)
    Path("run/final").mkdir(parents=True)
    Path("run/config.yaml").write_text("task: arith:-\nmax_completion_length: 3\noutput_dir: run\n")
    seen = {}

    def load_inputs(cfg, split):
        seen.update(task=cfg.task, length=cfg.max_completion_length, model=cfg.model)
        raise cfglib.ConfigError("stop here")

    monkeypatch.setattr(inputslib, "load_inputs", load_inputs)
    with caplog.at_level("INFO", logger="apo"):
        assert main(["eval", "--policy", "run/final"]) == 2
    assert seen == {"task": "arith:-", "length": 3, "model": "run/final"}
    assert any("with its run's saved config run/config.yaml" in r.getMessage() for r in caplog.records)
    assert main(["eval", "--policy", "run/final", "max_completion_length=5"]) == 2  # overrides still apply
    assert seen["length"] == 5 and seen["task"] == "arith:-"
    assert main(["eval", "default", "--policy", "run/final"]) == 2  # a CONFIG given: that one
    assert seen["task"] == "arith" and seen["model"] == "run/final"


def test_an_unwritable_output_dir_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # tests may run as root
    out = tmp_path / "r"
    assert cfglib.resolve_values(None, {"output_dir": str(out)})  # apo eval and apo config do not write there
    assert main(["train", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is inside {str(tmp_path)!r}, which is not writable" in err[0]
    assert main(["compare", "--seeds", "0", "--out", str(out)]) == 2
    assert "which is not writable; pass --out <a folder>" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "t.json"), "could not access 't.json': Permission denied"),
        (OSError(errno.ENOSPC, "Disk full", "t.json"), "could not write 't.json': Disk full"),
    ],
)
def test_a_location_that_cannot_be_written_is_one_line(error, line, tmp_path, monkeypatch, capsys):
    """A read-only or full disk says "could not write"; a permission error (reading or writing) "could not access"."""
    import apo.cli.compare as comparelib

    def plot_comparison(*a, **k):
        raise error

    monkeypatch.setattr(comparelib, "plot_comparison", plot_comparison)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    assert main(["plot", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"apo: error: {line}"]


# --- ranges ---------------------------------------------------------------------------------------------------------


def _numeric_fields():
    cls = cfglib.run_config_class()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        lists = [a for a in args if typing.get_origin(a) is list]  # list[float] | None
        if any(a in (int, float) for a in args) or any(set(typing.get_args(a)) & {int, float} for a in lists):
            yield f


def test_every_numeric_key_has_a_range_or_is_listed_as_unconstrained():
    missing = [f.name for f in _numeric_fields() if f.name not in cfglib.RANGES and f.name not in cfglib.UNCONSTRAINED]
    assert not missing, f"give a range in the field metadata (or INHERITED_RANGES, or UNCONSTRAINED) for {missing}"
    fields = {f.name for f in dataclasses.fields(cfglib.run_config_class())}
    assert not (set(cfglib.RANGES) | set(cfglib.UNCONSTRAINED)) - fields  # no stale entry
    assert not set(cfglib.RANGES) & set(cfglib.UNCONSTRAINED)


def test_every_default_is_in_its_range():
    for f in _numeric_fields():
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in cfglib.RANGES and isinstance(default, (int, float)) and not isinstance(default, bool):
            cfglib.check_ranges({f.name: default})


@pytest.mark.parametrize(
    "spec, inside, outside",
    [
        (">= 0", [0, 1e-9, 5], [-1e-9, float("nan")]),
        ("> 0", [1e-12, 3], [0, -1]),
        ("(0, 1]", [1e-9, 0.5, 1], [0, 1.0000001]),
        ("[0, 1)", [0, 0.999], [1, -0.1]),
        ("-1 | >= 1", [-1, 1, 400], [0, -2, 0.5]),
    ],
)
def test_range_syntax(spec, inside, outside):
    from apo.algorithms import in_range

    assert all(in_range(v, spec) for v in inside) and not any(in_range(v, spec) for v in outside)


@pytest.mark.parametrize("text", ["1e-5", "1E-5", "1.0e-05", ".5", "-1e-3", "+1e5", "-.5", "3.", "2_000.5"])
def test_yaml_floats_in_every_spelling(text, tmp_path):
    expected = float(text.replace("_", ""))
    assert cfglib.yaml_load(f"x: {text}", "t") == {"x": expected}
    (tmp_path / "c.yaml").write_text(f"learning_rate: {text}\n")
    if expected >= 0:
        assert cfglib.resolve_values(tmp_path / "c.yaml")["learning_rate"] == expected
    assert cfglib.parse_overrides([f"learning_rate={text}"]) == {"learning_rate": expected}
    assert cfglib.yaml_load("x: 12", "t") == {"x": 12} and cfglib.yaml_load("x: '1e-5'", "t") == {"x": "1e-5"}
    import yaml

    assert yaml.safe_load("x: 1e-5") == {"x": "1e-5"}  # PyYAML's own loader is left as it is


@pytest.mark.parametrize(
    "text, value",
    [("010", 10), ("1:30", "1:30"), ("off", "off"), ("no", "no"), ("y", "y"), ("{digits: true}", {"digits": True})]
    + [("2024-01-01", "2024-01-01"), ("0o17", 15), ("0x1F", 31), ("1e-5", 1e-5), ("1_000", 1000), ("~", None)],
)
def test_yaml_values_are_read_as_written(text, value, tmp_path):
    # YAML 1.2 core schema; YAML 1.1 gives 8, 90, False, False, True, {digits: 1}, a date, '0o17', ...
    assert cfglib.parse_overrides([f"k={text}"]) == {"k": value}
    assert cfglib.yaml_load(f"k: {text}\n", "t") == {"k": value}
    # and what apo writes (config.yaml, apo config) reads back the same, with YAML 1.1 readers too
    import yaml

    text_out = cfglib.yaml_dump({"k": value, "s": text})
    assert cfglib.yaml_load(text_out, "t") == {"k": value, "s": text}
    assert yaml.safe_load(text_out)["s"] == text


@pytest.mark.parametrize("flag", [[], ["--all"]])
def test_apo_config_output_reads_back_to_the_same_config(flag, tmp_path, capsys):
    assert main(["config", "alpha_schedule=fixed", "alpha=0.25", *flag]) == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    again = cfglib.to_dict(cfglib.resolve(tmp_path / "c.yaml"))
    assert again == cfglib.to_dict(cfglib.resolve(None, {"alpha_schedule": "fixed", "alpha": 0.25}))
    assert main(["config", str(tmp_path / "c.yaml")]) == 0  # `apo train c.yaml` resolves the same way


def test_a_config_from_scratch_runs_on_a_cpu_only_machine(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cfglib, "accelerator_available", lambda: False)
    monkeypatch.setattr(cfglib, "_SAID", set())
    (tmp_path / "scratch.yaml").write_text("max_steps: 1\n")
    with caplog.at_level("INFO", logger="apo"):
        values = cfglib.resolve_values(tmp_path / "scratch.yaml")
        cfglib.resolve_values(tmp_path / "scratch.yaml")
    assert values["use_cpu"] is True and values["bf16"] is False
    cfg = cfglib.build(values)  # TRL would refuse bf16 on this machine
    assert cfg.use_cpu and not cfg.bf16
    assert [r.getMessage() for r in caplog.records] == [cfglib.CPU_FALLBACK]  # one line, once
    (tmp_path / "gpu.yaml").write_text("max_steps: 1\nbf16: true\n")
    assert "use_cpu" not in cfglib.resolve_values(tmp_path / "gpu.yaml")  # the user's choice stays
    monkeypatch.setattr(cfglib, "accelerator_available", lambda: True)
    assert "use_cpu" not in cfglib.resolve_values(tmp_path / "scratch.yaml")


def test_validation_costs_well_under_50_ms():
    values = cfglib.to_dict(cfglib.resolve(None))  # every key of the run config
    t0 = time.perf_counter()
    for _ in range(100):
        cfglib.check_ranges(values)
        cfglib.check_paths(values)
    per_call_ms = (time.perf_counter() - t0) * 10
    assert per_call_ms < 5, per_call_ms


# --- CLI basics -----------------------------------------------------------------------------------------------------


def _all_help() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {"apo": parser.format_help(), **{name: p.format_help() for name, p in sub.choices.items()}}


def test_help_texts_have_no_rst_markup():
    for name, text in _all_help().items():
        for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
            assert markup not in text, (name, markup)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from apo import __version__

    assert capsys.readouterr().out.strip() == f"apo {__version__}"


def test_train_help_points_to_config_all_and_compare_help_describes_its_options():
    helps = _all_help()
    assert "apo config --all" in helps["train"]
    compare = " ".join(helps["compare"].split())
    assert "comma-separated presets (apo-ess, apo-fixed" in compare
    assert "comma-separated integer seeds; every algorithm runs once per seed" in compare


def test_config_all_lists_every_key_with_type_default_range_and_help(capsys):
    assert main(["config", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {ln.split(":", 1)[0] for ln in lines if not ln.startswith("#")}
    fields = {f.name for f in dataclasses.fields(cfglib.run_config_class()) if f.init}
    assert keys == fields
    lr = next(ln for ln in lines if ln.startswith("learning_rate:"))
    assert lr.startswith("learning_rate: 0.0001  # float, default 1e-06, range >= 0. ")
    assert "``" not in "\n".join(lines)
    loaded = cfglib.yaml_load("\n".join(lines), "config --all")  # still a loadable YAML file
    assert loaded["learning_rate"] == 0.0001


def _cli_imports() -> dict[str, set[str]]:
    """``module -> the apo.cli modules it imports`` (at any depth in the file, functions included)."""
    graph = {}
    for path in CLI.glob("*.py"):
        mod = f"apo.cli.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apo.cli"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if (CLI / f"{a.name}.py").exists()}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("apo.cli")}
        graph[mod] = {d for d in deps if d != "apo.cli" and d != mod}
    return graph


def test_cli_import_graph_is_one_way():
    graph = _cli_imports()
    importers_of_main = sorted(m for m, deps in graph.items() if "apo.cli.main" in deps)
    assert importers_of_main == [], importers_of_main

    def visit(mod, path):
        for dep in graph.get(mod, ()):
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for mod in graph:
        visit(mod, [mod])
    code = "import sys, apo.cli.compare; assert 'apo.cli.main' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


# --- resume ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-step run with a checkpoint at every step (the default keeps the last two)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    args = [f"output_dir={run}", "max_steps=3", "save_steps=1", "eval_size=4", "eval_samples=2", *FAST[1:]]
    assert main(["train", *args]) == 0
    return run


def test_resume_of_a_finished_run_changes_nothing(finished_run, caplog, capsys):
    before = _tree(finished_run)
    assert {"final/model.safetensors", "eval_after.json", "summary.json"} <= set(before)
    time.sleep(0.01)
    with caplog.at_level("INFO"):
        assert main(["train", str(finished_run / "config.yaml"), "--resume"]) == 0
    assert _tree(finished_run) == before  # bytes and mtimes of every file
    expected = _fault("--resume of a finished run").line.replace("<run>", str(finished_run))
    assert expected in _log_lines(caplog)
    assert json.loads(capsys.readouterr().out)["steps"] == 3


def test_a_damaged_newest_checkpoint_is_named_and_passed_over(finished_run, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = (run / "config.yaml").read_text().replace(str(finished_run), str(run))
    (run / "config.yaml").write_text(config)
    reference = [{k: v for k, v in json.loads(ln).items() if "time" not in k} for ln in open(run / "metrics.jsonl")]
    for name in ("summary.json", "eval_after.json"):
        (run / name).unlink()
    shutil.rmtree(run / "final")
    model = run / "checkpoint-3" / "model.safetensors"
    size = model.stat().st_size
    with open(model, "r+b") as f:
        f.truncate(100)
    assert verify_checkpoint(run / "checkpoint-2") is None
    with caplog.at_level("WARNING"):
        assert main(["train", str(run / "config.yaml"), "--resume"]) == 0
    expected = (
        _fault("damaged newest checkpoint")
        .line.replace("<run>", str(run))
        .replace("<N>", "3")
        .replace("<M>", "2")
        .replace("<size>", str(size))
    )
    assert expected in _log_lines(caplog), _log_lines(caplog)
    resumed = [{k: v for k, v in json.loads(ln).items() if "time" not in k} for ln in open(run / "metrics.jsonl")]
    assert resumed == reference  # step 3 trained again from checkpoint-2, exactly as the first time
    assert verify_checkpoint(run / "checkpoint-3") is None


def test_a_checkpoint_without_or_against_its_manifest_is_rejected(finished_run, tmp_path):
    import shutil

    ckpt = tmp_path / "checkpoint-3"
    shutil.copytree(finished_run / "checkpoint-3", ckpt)
    assert verify_checkpoint(ckpt) is None
    (ckpt / "trainer_state.json").write_text((ckpt / "trainer_state.json").read_text().replace('"', "'", 1))
    assert verify_checkpoint(ckpt) == "trainer_state.json differs from its SHA-256 in the manifest"
    (ckpt / "scheduler.pt").unlink()
    assert verify_checkpoint(ckpt, hashes=False) == "scheduler.pt is missing"
    (ckpt / "apo_manifest.json").unlink()
    assert verify_checkpoint(ckpt).startswith("no apo_manifest.json")


# --- signals --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def _start_and_wait_for_steps(zygote, argv, log, run, steps=1, timeout=120):
    pid = zygote.start(argv, log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= steps:
            return pid
        time.sleep(0.02)
    raise AssertionError(log.read_text()[-3000:])


@pytest.mark.slow
def test_sigint_stops_at_a_step_boundary_and_resume_continues(zygote, tmp_path):
    run = tmp_path / "run"
    argv = ["train", f"output_dir={run}", "max_steps=8", "save_steps=100", *FAST]
    pid = _start_and_wait_for_steps(zygote, argv, tmp_path / "a.log", run)
    os.kill(pid, signal.SIGINT)
    assert zygote.wait(pid) == 130
    last = (tmp_path / "a.log").read_text().strip().splitlines()[-1]
    n = _steps(run)[-1]
    template = _fault("SIGINT (Ctrl-C) during training").line
    assert last == template.replace("<N>", str(n)).replace("<run>", str(run))
    assert _steps(run) == list(range(1, n + 1)) and n < 8
    assert verify_checkpoint(run / f"checkpoint-{n}") is None  # saved at the stop, not by save_steps
    pid = zygote.start(RESUME.replace("<run>", str(run)).split()[1:], tmp_path / "b.log")
    assert zygote.wait(pid) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert _steps(run) == list(range(1, 9))  # no step lost or repeated


@pytest.mark.slow
def test_second_signal_stops_at_once(zygote, tmp_path):
    """The second signal comes 10 ms after the first, while the run is stopping: a reward that sleeps 2 s keeps each
    step, and so the stop, that long (with the tiny model's ~50 ms steps, a loaded machine could finish the stop first)."""
    run = tmp_path / "run"
    argv = ["train", f"output_dir={run}", "max_steps=50", "reward=bad_rewards:slow", "reward_timeout=60", *FAST]
    pid = _start_and_wait_for_steps(zygote, argv, tmp_path / "a.log", run)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.01)
    os.kill(pid, signal.SIGTERM)
    assert zygote.wait(pid) == 143
    last = (tmp_path / "a.log").read_text().strip().splitlines()[-1]
    assert last == _fault("a second signal while stopping").line.replace("<run>", str(run))


@pytest.mark.slow
def test_stop_without_checkpoints_says_so(zygote, tmp_path):
    run = tmp_path / "run"
    argv = ["train", f"output_dir={run}", "max_steps=50", "save_strategy=no", *FAST]
    pid = _start_and_wait_for_steps(zygote, argv, tmp_path / "a.log", run)
    os.kill(pid, signal.SIGINT)
    assert zygote.wait(pid) == 130
    last = (tmp_path / "a.log").read_text().strip().splitlines()[-1]
    n = _steps(run)[-1]
    assert last == _fault("a stop with save_strategy=no").line.replace("<N>", str(n)).replace("<run>", str(run))
    assert not list(run.glob("checkpoint-*"))


# --- apo compare: workers die with it, and stop with it -------------------------------------------------------------

COMPARE = ["compare", "--jobs", "2", "--algorithms", "apo-fixed,grpo", "--seeds", "0"]


def _compare_proc(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "apo.cli.main", *COMPARE, "--out", str(out), *FAST, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers(proc, n=2, timeout=120) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if len(kids) >= n:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the comparison did not start its workers")


@pytest.mark.slow
def test_compare_workers_die_with_a_killed_comparison(tmp_path):
    proc = _compare_proc(tmp_path / "cmp", "max_steps=200")
    workers = _workers(proc)
    time.sleep(1.0)
    workers = psutil.Process(proc.pid).children(recursive=True) or workers
    proc.kill()
    proc.wait()
    left = survivors(workers)
    assert not left, [(p.pid, p.cmdline()) for p in left]


@pytest.mark.slow
def test_compare_passes_the_stop_on_and_leaves_resumable_runs(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    proc = _compare_proc(out, "max_steps=30", "save_steps=100")
    _workers(proc)
    runs = [out / "apo-fixed-seed0", out / "grpo-seed0"]
    deadline = time.time() + 180
    while not all((r / "metrics.jsonl").exists() for r in runs) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    args = " ".join([*COMPARE[1:], "--out", str(out), *FAST, "max_steps=30", "save_steps=100"])
    expected = _fault("SIGTERM to apo compare").line.replace("<same arguments>", args)
    unfinished = [r for r in runs if not (r / "summary.json").exists()]  # on a slow machine one may have finished
    assert unfinished, "both runs finished before the stop: nothing was stopped"
    assert last == expected.replace("(2 of 2 runs", f"({len(unfinished)} of 2 runs")
    for r in unfinished:  # each stopped at a step boundary with a checkpoint of that step
        n = _steps(r)[-1]
        assert n < 30 and verify_checkpoint(r / f"checkpoint-{n}") is None
    monkeypatch.chdir(tmp_path)
    rerun = [*COMPARE, "--out", str(out), *FAST, "max_steps=30", "save_steps=100"]
    rerun[rerun.index("--jobs") + 1] = "1"  # the same runs, resumed in this process
    assert main(rerun) == 0
    for r in runs:
        assert _steps(r) == list(range(1, 31))


# --- children: default signal dispositions, closed by their owner; one process per run directory --------------------


def _constant_reward(completions, **columns):
    return [1.0] * len(completions)


def test_a_reward_worker_started_under_the_stop_handler_ends_on_sigterm():
    """The cause of runs that never exited: a worker forked while the run's graceful SIGTERM handler is installed
    inherited it, ignored the SIGTERM of multiprocessing's exit hook, and the join waited for ever."""
    from apo.cli.process import StopSignals
    from apo.tasks.bounded import close_children, safe_reward

    with StopSignals() as stop:
        reward = safe_reward(_constant_reward, timeout_s=10.0, per_completion=False)
        assert reward(["a", "b"]) == [1.0, 1.0]
        worker = reward._proc
        assert os.getpgid(worker.pid) == worker.pid != os.getpgid(0)  # a terminal's Ctrl-C does not reach it
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(10)
        assert worker.exitcode == -signal.SIGTERM and not stop.requested
        assert reward(["c"]) == [1.0]  # a fresh worker
        t0 = time.time()
        close_children()
        assert reward.pid is None and time.time() - t0 < 5


def test_sighup_stops_like_sigterm():
    from apo.cli.process import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.2)
        assert stop.requested and stop.name == "SIGHUP" and stop.code == 129


def test_one_process_per_run_directory(tmp_path):
    from apo.cli.lock import LOCK_NAME, RunDirBusy, RunLock, holder

    lock = RunLock(tmp_path).acquire()
    assert holder(tmp_path) == os.getpid()
    with pytest.raises(RunDirBusy, match=f"in use by apo process {os.getpid()}: one run per output_dir"):
        RunLock(tmp_path).acquire()  # flock is per open file: a second open, even in this process, is refused
    lock.release()
    assert holder(tmp_path) is None and not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()
