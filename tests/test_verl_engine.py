"""The verl plug-in trained end to end by verl 0.9.1's own parts, on CPU.

One child process (``python tests/test_verl_engine.py OUT.json``) drives verl as its legacy trainer does, step by
step: a tiny Llama saved with ``save_pretrained`` into a temporary folder; verl's ``HFRollout`` generating ``n``
completions per prompt; a rule-based reward; verl's recomputation of ``old_log_probs``
(``TrainingWorker.infer_batch``); verl's ``ray_trainer.compute_advantage`` running the registered estimator; and
verl's ``TrainingWorker.train_mini_batch`` (mini-batches and epochs from ``tensordict_utils.make_iterator``) over the
FSDP engine found by ``EngineRegistry`` (``FSDPEngineWithLMHead``: fsdp2, one process, gloo, fp32, no offload),
whose ``forward_backward_batch`` cuts micro-batches and calls ``workers.utils.losses.ppo_loss`` (which looks
``loss_mode`` up in verl's registry), then ``optimizer_step``. The child records every micro-batch the loss sees and
writes a JSON report; the tests below check it. The child runs apart from pytest because verl reads the platform
once per process, at import.

Test-only shims (not in the package; verl 0.9.1 has no CPU platform): a ``PlatformBase`` subclass registered as
``cpu_test`` (``VERL_PLATFORM``), ``VERL_ENGINE_DEVICE=cuda`` to pick the FSDP engine registered for CUDA, and an
``HFRollout`` subclass whose constructor does not call ``BaseRollout.__init__`` (which 0.9.1's ``HFRollout`` calls with
the wrong arguments) and whose weight-sync hooks are no-ops: the rollout generates with the actor's own module, as
verl's colocated hybrid engine does. Attention is ``sdpa`` (verl's default ``flash_attention_2`` needs CUDA).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from functools import partial

import pytest

pytest.importorskip("verl")
pytestmark = pytest.mark.verl

B, G, P, R = 4, 4, 8, 10  # prompts per rollout, completions per prompt (rollout.n), prompt width, response width
N = B * G
ROLLOUTS = 3
TAU, BETA = 0.8, 0.7

# name -> the overrides of one training run (on top of _Run's base overrides)
SCENARIOS = {
    # exact APO loss, ESS schedule, two mini-batches per rollout (u != 0 on the second), padded micro-batches
    "apo": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=apo",
        "algorithm.adv_estimator=apo_group",
        "+actor_rollout_ref.actor.policy_loss.alpha_schedule=ess",
        "+actor_rollout_ref.actor.policy_loss.ess_target=0.8",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={B // 2}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={G}",
        "actor_rollout_ref.model.use_remove_padding=false",
    ],
    # ADPO, one mini-batch, two epochs (u != 0 on the second), micro-batch of two groups, remove-padding on
    "adpo": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=adpo",
        "algorithm.adv_estimator=apo_group",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={B}",
        "actor_rollout_ref.actor.ppo_epochs=2",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={2 * G}",
        "actor_rollout_ref.model.use_remove_padding=true",
    ],
    # advantage mode: on-policy APO advantages + verl's vanilla PPO loss, micro-batches that split groups, shuffled
    "adv": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        "algorithm.adv_estimator=apo",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={B // 2}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.shuffle=true",
        "actor_rollout_ref.model.use_remove_padding=true",
    ],
}
# layouts that would split or reorder groups in group mode: each must stop at the first step, naming the setting
BAD_LAYOUTS = {
    "micro_not_multiple_of_n": ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=6"],
    "dynamic_bsz": [
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=48",
    ],
    "shuffle": ["actor_rollout_ref.actor.shuffle=true"],
}
BAD_BASE = [
    "actor_rollout_ref.actor.policy_loss.loss_mode=apo",
    "algorithm.adv_estimator=apo_group",
    f"actor_rollout_ref.actor.ppo_mini_batch_size={B}",
    f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={G}",
]


# ------------------------------------------------------------------------------------------------------------------
# The child process: verl on CPU.


def _cpu_platform():
    """Register a CPU ``PlatformBase`` under ``cpu_test`` (before anything asks verl for its platform)."""
    import torch
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    class _CPUDevice:
        """``torch.cpu`` plus the ``torch.cuda`` calls verl makes for memory logs, as no-ops."""

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            if hasattr(torch.cpu, name):
                return getattr(torch.cpu, name)
            zeros = {"mem_get_info": (0, 0), "get_device_name": "CPU"}
            return lambda *args, **kwargs: zeros.get(name, 0)

    @PlatformRegistry.register(platform="cpu_test")
    class CPUPlatform(PlatformBase):
        device_name = "cpu"
        vendor_name = "cpu"
        device_module = _CPUDevice()

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"  # verl moves micro-batches with .to(current_device())

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        def manual_seed_all(self, seed):
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return (None, None)

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None


def _digit_reward(texts, answers):
    """Rule-based reward in [0, 1]: the share of the answer's digits that the completion's first token run of digits
    matches position by position (a graded signal, so that most groups of a weak model have reward variance)."""
    out = []
    for text, answer in zip(texts, answers, strict=True):
        digits = ""
        for ch in text.strip():
            if not ch.isdigit():
                break
            digits += ch
        hits = sum(a == b for a, b in zip(digits, answer, strict=False))
        out.append(hits / max(len(answer), len(digits), 1))
    return out


class _Run:
    """One training run: a fresh model folder, config, TrainingWorker and rollout; records each loss call."""

    def __init__(self, model_dir, overrides):
        import verl
        from hydra import compose, initialize_config_dir
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig
        from verl.workers.rollout.hf_rollout import HFRollout
        from verl.workers.utils.losses import ppo_loss

        base = [
            f"actor_rollout_ref.model.path={model_dir}",
            "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
            "actor_rollout_ref.model.enable_gradient_checkpointing=false",
            "actor_rollout_ref.actor.strategy=fsdp2",
            "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
            "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
            "actor_rollout_ref.actor.optim.lr=3e-4",
            f"actor_rollout_ref.rollout.n={G}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={G}",
            f"data.max_prompt_length={P}",
            f"data.max_response_length={R}",
            "actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig",
            f"+actor_rollout_ref.actor.policy_loss.tau_anchor={TAU}",
            f"+actor_rollout_ref.actor.policy_loss.beta_reward={BETA}",
            "+algorithm.apo=${actor_rollout_ref.actor}",
            "trainer.balance_batch=false",
            "trainer.use_v1=false",
        ]
        config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            self.cfg = compose("ppo_trainer", overrides=base + list(overrides))
        ar = self.cfg.actor_rollout_ref
        # ActorRolloutRefWorker.init_model, actor part (verl 0.9.1 engine_workers.py)
        model_config = omega_conf_to_dataclass(ar.model)
        self.actor_config = omega_conf_to_dataclass(ar.actor)
        self.actor_config.model_config = model_config
        tc = TrainingWorkerConfig(
            model_type="language_model",
            model_config=model_config,
            engine_config=self.actor_config.engine,
            optimizer_config=self.actor_config.optim,
            checkpoint_config=self.actor_config.checkpoint,
        )
        tc.engine_config.use_dynamic_bsz = ar.actor.use_dynamic_bsz
        tc.engine_config.infer_max_token_len_per_gpu = ar.rollout.log_prob_max_token_len_per_gpu
        tc.engine_config.infer_micro_batch_size_per_gpu = ar.rollout.log_prob_micro_batch_size_per_gpu
        tc.engine_config.max_token_len_per_gpu = ar.actor.ppo_max_token_len_per_gpu
        tc.engine_config.micro_batch_size_per_gpu = ar.actor.ppo_micro_batch_size_per_gpu
        tc.engine_config.use_remove_padding = model_config.get("use_remove_padding", False)
        self.worker = TrainingWorker(config=tc)
        self.worker.reset()
        self.calls = []
        self.worker.set_loss_fn(partial(self._loss, partial(ppo_loss, config=self.actor_config)))

        class SharedHFRollout(HFRollout):
            def __init__(self, module, config):
                self.config, self.module = config, module

            async def resume(self, tags):
                pass

            async def release(self):
                pass

            async def update_weights(self, weights, **kwargs):
                pass

        self.rollout = SharedHFRollout(self.worker.engine.module, ar.rollout)

    def params(self):
        """Full fp32 copy of the engine's parameters (DTensor shards of one rank are the whole tensor)."""
        return {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in self.worker.engine.module.named_parameters()
        }

    def _loss(self, loss_fn, model_output, data, dp_group=None):
        from verl.workers.utils.padding import no_padding_2_padding

        loss, metrics = loss_fn(model_output=model_output, data=data, dp_group=dp_group)
        self.calls.append(
            {
                "rows": data["row_id"].tolist(),
                "log_probs": no_padding_2_padding(model_output["log_probs"], data).detach().clone(),
                "loss": float(loss.detach()),
                "metrics": {k: float(v.values[0]) if hasattr(v, "values") else float(v) for k, v in metrics.items()},
                "params": self.params(),
                "global_batch_size": int(data["global_batch_size"]),
            }
        )
        return loss, metrics

    def rollout_batch(self, tokenizer, step):
        """Prompts -> HFRollout -> rewards -> old_log_probs (recomputed by the actor) -> compute_advantage."""
        import numpy as np
        import torch
        from verl import DataProto
        from verl.trainer.ppo.ray_trainer import compute_advantage
        from verl.utils import tensordict_utils as tu
        from verl.utils.model import compute_position_id_with_mask
        from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

        from apo.tasks.arithmetic import ArithmeticTask, generate

        rows = generate(ArithmeticTask(ops=("+",), digits=2), "train", B, seed=100 + step)
        enc = tokenizer(
            [r["prompt"] for r in rows], padding="max_length", max_length=P, padding_side="left", return_tensors="pt"
        )
        prompts = DataProto.from_dict(
            tensors={
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "position_ids": compute_position_id_with_mask(enc["attention_mask"]),
            },
            non_tensors={
                "uid": np.array([f"{step}-{b}" for b in range(B)], dtype=object),
                "answer": np.array([r["answer"] for r in rows], dtype=object),
            },
            meta_info={"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        ).repeat(repeat_times=G, interleave=True)
        torch.manual_seed(step)
        batch = self.rollout.generate_sequences(prompts)
        batch.non_tensor_batch = dict(prompts.non_tensor_batch)
        batch.batch["response_mask"] = batch.batch["attention_mask"][:, -R:]
        batch.batch["row_id"] = torch.arange(N)
        texts = tokenizer.batch_decode(batch.batch["responses"], skip_special_tokens=True)
        rewards = torch.tensor(_digit_reward(texts, list(batch.non_tensor_batch["answer"])), dtype=torch.float32)
        lengths = batch.batch["response_mask"].sum(-1)
        token_rewards = torch.zeros(N, R)
        token_rewards[torch.arange(N), lengths - 1] = rewards
        batch.batch["token_level_rewards"] = token_rewards
        # RayPPOTrainer._compute_old_log_prob
        td = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(td, calculate_entropy=True, calculate_sum_pi_squared=False, compute_loss=False)
        tu.assign_non_tensor(td, temperature=1.0)
        out = self.worker.infer_batch(td)
        batch.batch["old_log_probs"] = no_padding_2_padding(tu.get(out, "log_probs"), td).float()
        algo = self.cfg.algorithm
        batch = compute_advantage(batch, adv_estimator=algo.adv_estimator, config=algo)
        return batch, rewards

    def update(self, batch):
        """RayPPOTrainer._update_actor -> ActorRolloutRefWorker.update_actor -> TrainingWorker.train_mini_batch."""
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding

        actor = self.cfg.actor_rollout_ref.actor
        batch.meta_info["temperature"] = self.cfg.actor_rollout_ref.rollout.temperature
        td = left_right_2_no_padding(batch.to_tensordict())
        mini = actor.ppo_mini_batch_size * self.cfg.actor_rollout_ref.rollout.n
        tu.assign_non_tensor(
            td,
            calculate_entropy=False,
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=mini,
            mini_batch_size=mini,
            epochs=actor.ppo_epochs,
            seed=actor.data_loader_seed,
            dataloader_kwargs={"shuffle": actor.shuffle},
            compute_loss=True,
        )
        return tu.get(self.worker.train_mini_batch(td), "metrics")


def _library_losses(run, model_dir, batches, loss_mode):
    """For every recorded micro-batch, the library's loss on its groups, scaled as the plug-in scales it (groups in
    the micro-batch / groups in the mini-batch), twice: ``same``, from the per-token log-probs verl's forward gave the
    loss (so only verl's unpadding, dispatch, payload and scaling stand between the two), in their dtype (float32);
    ``forward``, from a separate plain transformers forward at the parameters the engine held, in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    from apo.core import get_objective
    from apo.integrations.verl import payload

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    same, forward = [], []
    for call in run.calls:
        batch, rewards = batches[call["rollout"]]
        missing = model.load_state_dict(call["params"], strict=False).missing_keys
        assert set(missing) <= {"lm_head.weight"}, missing
        model.tie_weights()
        rows = torch.tensor(call["rows"])
        b = batch.batch
        with torch.no_grad():
            logits = model(
                input_ids=b["input_ids"][rows],
                attention_mask=b["attention_mask"][rows],
                position_ids=b["position_ids"][rows],
            ).logits.double()
        logp = torch.log_softmax(logits[:, P - 1 : -1], -1).gather(-1, b["responses"][rows].unsqueeze(-1)).squeeze(-1)
        mask = b["response_mask"][rows].bool()
        alpha = payload.decode(b["advantages"][rows]).alpha
        scale = (len(call["rows"]) // G) / (call["global_batch_size"] // G)
        for out, lp in ((same, call["log_probs"]), (forward, logp)):
            loss, _ = get_objective(loss_mode)(
                lp, b["old_log_probs"][rows].to(lp.dtype), mask, rewards[rows].to(lp.dtype), rows // G,
                tau_anchor=TAU, beta_reward=BETA, group_size=G, **({"alpha": alpha} if loss_mode == "apo" else {}),
            )  # fmt: skip
            out.append(float(loss) * scale)
    return same, forward


def _scenario(name, overrides, tokenizer, model_dir):
    import torch

    from apo.core import ESSAlpha, boltzmann_log_target, on_policy_advantages
    from apo.integrations.verl import algos

    algos._SCHEDULES.clear()
    run = _Run(model_dir, overrides)
    start = run.params()
    batches, report = [], {"rollouts": []}
    schedule = ESSAlpha(0.35, 0.9, 0.8)
    for step in range(ROLLOUTS):
        batch, rewards = run.rollout_batch(tokenizer, step)
        batches.append((batch, rewards))
        r_BG = rewards.double().view(B, G)
        entry = {"rewards": rewards.tolist(), "reward_std_groups": int((r_BG.std(-1) > 0).sum())}
        if name == "apo":  # the schedule the estimator should have stepped, replayed here
            log_p = torch.full((B, G), -math.log(G), dtype=torch.float64)
            alpha = schedule.update(rewards_BG=r_BG, log_q_BG=boltzmann_log_target(r_BG, BETA), log_p_BG=log_p)
            entry["expected_alpha"] = float(alpha)
        if name == "adv":  # the estimator's advantages against the library's on-policy APO advantages
            expected = on_policy_advantages(r_BG, alpha=0.6, tau_anchor=TAU, beta_reward=BETA).view(N)
            got = (batch.batch["advantages"] * batch.batch["response_mask"]).sum(-1) / batch.batch[
                "response_mask"
            ].sum(-1)
            entry["adv_max_err"] = float((got.double() - expected).abs().max())
        first = len(run.calls)
        metrics = run.update(batch)
        for call in run.calls[first:]:
            call["rollout"] = step
        entry["grad_norm"] = [float(g) for g in metrics.get("grad_norm", [])]
        report["rollouts"].append(entry)
    end = run.params()
    report["weight_change"] = max(float((end[k] - start[k]).abs().max()) for k in start)
    if name in ("apo", "adpo"):
        report["library_same"], report["library_forward"] = _library_losses(run, model_dir, batches, name)
    report["calls"] = [{k: v for k, v in c.items() if k not in ("params", "log_probs")} for c in run.calls]
    report["optimizer_steps"] = sum(len(e["grad_norm"]) for e in report["rollouts"])
    return report


def _bad_layout(overrides, tokenizer, model_dir):
    """Run the first step with a layout that would break groups; report where it stopped and with what."""
    from apo.integrations.verl import algos

    algos._SCHEDULES.clear()
    run = _Run(model_dir, BAD_BASE + list(overrides))
    start = run.params()
    stage = "rollout"
    try:
        batch, _ = run.rollout_batch(tokenizer, 0)
        stage = "update"
        run.update(batch)
        stage = "none"
        error = ""
    except ValueError as err:
        error = str(err)
    end = run.params()
    return {
        "stage": stage,
        "error": error,
        "weights_moved": any(bool((end[k] != start[k]).any()) for k in start),
        "loss_calls": len(run.calls),
    }


def _dynamic_bsz_in_the_engine(tokenizer, model_dir):
    """The estimator's settings check off (it reads use_dynamic_bsz=false) while the engine re-packs by token count:
    verl's rearrange_micro_batches really reorders / splits groups, and the loss stops at the first micro-batch."""
    from apo.integrations.verl import algos

    algos._SCHEDULES.clear()
    run = _Run(model_dir, BAD_BASE)
    batch, _ = run.rollout_batch(tokenizer, 0)
    engine_config = run.worker.engine_config
    engine_config.use_dynamic_bsz, engine_config.max_token_len_per_gpu = True, 48
    try:
        run.update(batch)
        error = ""
    except ValueError as err:
        error = str(err)
    return {"error": error, "loss_calls": len(run.calls)}


def _child(out_path):
    import socket
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port), VERL_PLATFORM="cpu_test", VERL_ENGINE_DEVICE="cuda",
    )  # fmt: skip
    t0 = time.time()
    _cpu_platform()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import apo.integrations.verl.plugin  # noqa: F401  (what the verl.plugins entry point does on import verl)
    from apo.tasks.tiny import SHIPPED_DIR

    report = {"platform": None, "engine": None, "timing": {}}
    with tempfile.TemporaryDirectory() as model_dir:
        AutoModelForCausalLM.from_pretrained(SHIPPED_DIR).save_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
        tokenizer.save_pretrained(model_dir)
        from verl.utils.device import get_device_name

        report["platform"] = get_device_name()
        for name, overrides in SCENARIOS.items():
            t = time.time()
            report[name] = _scenario(name, overrides, tokenizer, model_dir)
            report["timing"][name] = time.time() - t
        report["bad"] = {k: _bad_layout(v, tokenizer, model_dir) for k, v in BAD_LAYOUTS.items()}
        report["engine_dynamic_bsz"] = _dynamic_bsz_in_the_engine(tokenizer, model_dir)
        from verl.workers.engine import EngineRegistry

        report["engine"] = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
    report["timing"]["total"] = time.time() - t0
    with open(out_path, "w") as f:
        json.dump(report, f)
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------------------------
# The tests (pytest process): read the child's report.


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("verl_engine") / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "RANK", "WORLD_SIZE", "MASTER_"))}
    done = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, env=env, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def _optimizer_steps(calls):
    """``{rollout: [[call, ...] per optimizer step]}``: a step is ``global_batch_size / micro-batch rows`` calls."""
    out = {}
    for call in calls:
        steps = out.setdefault(call["rollout"], [[]])
        if len(steps[-1]) * len(call["rows"]) == call["global_batch_size"]:
            steps.append([])
        steps[-1].append(call)
    return out


def test_runs_on_verls_fsdp_engine_on_cpu(report):
    assert report["platform"] == "cpu" and report["engine"] == "FSDPEngineWithLMHead"
    for name in SCENARIOS:
        grad_norms = [g for e in report[name]["rollouts"] for g in e["grad_norm"]]
        assert len(grad_norms) == report[name]["optimizer_steps"] == 2 * ROLLOUTS, name
        assert sum(g > 0 for g in grad_norms) >= 3 and all(math.isfinite(g) for g in grad_norms), (name, grad_norms)
        assert report[name]["weight_change"] > 1e-5, name  # the optimizer moved the weights


@pytest.mark.parametrize("mode", ["apo", "adpo"])
def test_engine_loss_equals_library_loss(report, mode):
    """Every micro-batch loss verl computed equals the library's on the same rows: from the same log-probs to 1e-5
    relative; from a separate float64 transformers forward at the same parameters to 3e-5 relative or 1e-7 absolute
    (float32 forward noise: the smallest losses here are ~1e-5; measured in 2026-12 with transformers 5.10.4, and the
    same on that loss with 5.19: 1.1e-5 relative on a loss of 0.032, below 5e-6 on every other loss above 1e-4)."""
    calls, same, forward = report[mode]["calls"], report[mode]["library_same"], report[mode]["library_forward"]
    assert len(calls) == len(same) == len(forward) >= 4 * ROLLOUTS
    assert sum(abs(e) > 1e-3 for e in forward) >= ROLLOUTS  # micro-batches whose groups carry a signal
    for call, lib, fwd in zip(calls, same, forward, strict=True):
        assert call["loss"] == pytest.approx(lib, rel=1e-5, abs=1e-12), (call["rows"], call["loss"], lib)
        assert call["loss"] == pytest.approx(fwd, rel=3e-5, abs=1e-7), (call["rows"], call["loss"], fwd)


def test_alpha_the_loss_used_is_the_schedules(report):
    """ESS schedule: the alpha every micro-batch's loss used is the one a fresh schedule gives on the same rewards."""
    expected = [e["expected_alpha"] for e in report["apo"]["rollouts"]]
    assert min(expected) < 0.9 - 1e-3  # the schedule moved off alpha_max, so a stale or default alpha would show
    for call in report["apo"]["calls"]:
        assert call["metrics"]["apo/alpha"] == pytest.approx(expected[call["rollout"]], abs=1e-12)


@pytest.mark.parametrize("mode", ["apo", "adpo"])
def test_groups_stay_whole_through_the_engines_micro_batches(report, mode):
    for steps in _optimizer_steps(report[mode]["calls"]).values():
        seen = []
        for step in steps:
            for call in step:
                rows = call["rows"]
                assert len(rows) % G == 0 and rows[0] % G == 0 and rows == list(range(rows[0], rows[0] + len(rows)))
                seen += rows
        epochs = 2 if mode == "adpo" else 1
        assert sorted(seen) == sorted(list(range(N)) * epochs)  # every row once per epoch, nothing dropped


@pytest.mark.parametrize("mode", ["apo", "adpo"])
def test_later_optimizer_steps_of_a_rollout_see_a_moved_policy(report, mode):
    """Two mini-batches (apo) or two epochs (adpo) per rollout: u = 0 on a rollout's first optimizer step (pi =
    pi_old, up to the forward's float32 noise), u != 0 on the second."""
    moved = 0
    for steps in _optimizer_steps(report[mode]["calls"]).values():
        assert len(steps) == 2
        assert all(c["metrics"]["apo/u_abs_max"] < 1e-4 for c in steps[0])
        moved += max(c["metrics"]["apo/u_abs_max"] for c in steps[1]) > 1e-2
    assert moved >= 2


def test_advantage_mode_trains_with_the_library_advantages(report):
    rollouts = report["adv"]["rollouts"]
    assert all(e["adv_max_err"] < 1e-5 for e in rollouts)
    sizes = {len(c["rows"]) for c in report["adv"]["calls"]}
    assert sizes == {2}  # micro-batches of 2 rows split groups of 4: fine in advantage mode


@pytest.mark.parametrize(
    ("layout", "setting"),
    [
        ("micro_not_multiple_of_n", "ppo_micro_batch_size_per_gpu=6 is not a multiple of G=4"),
        ("dynamic_bsz", "actor_rollout_ref.actor.use_dynamic_bsz=true"),
        ("shuffle", "actor_rollout_ref.actor.shuffle=true"),
    ],
)
def test_layout_that_splits_groups_stops_at_the_first_step(report, layout, setting):
    bad = report["bad"][layout]
    assert bad["stage"] == "rollout" and setting in bad["error"] and "\n" not in bad["error"]
    assert not bad["weights_moved"] and bad["loss_calls"] == 0


def test_engine_repacking_is_caught_by_the_loss(report):
    bad = report["engine_dynamic_bsz"]
    assert bad["loss_calls"] == 0  # raised inside the first micro-batch's loss, before any backward
    assert "use_dynamic_bsz=false" in bad["error"] and "\n" not in bad["error"]


if __name__ == "__main__":
    _child(sys.argv[1])
