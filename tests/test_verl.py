"""The verl 0.9.1 plug-in through verl's own code paths, on CPU.

The actor step is replayed as verl runs it: the real ``ppo_trainer.yaml`` composed by Hydra with the run script's
overrides, ``omega_conf_to_dataclass`` for the actor config (so ``policy_loss._target_`` is exercised), the
registered estimator looked up by name, the batch packed by ``DataProto.to_tensordict`` + ``left_right_2_no_padding``
as the legacy trainer's ``_update_actor`` does, mini-batches from ``tensordict_utils.make_iterator`` (with its
``shuffle``), micro-batches from ``engine.utils.prepare_micro_batches``, and the loss through
``verl.workers.utils.losses.ppo_loss`` (which looks the policy loss up by ``loss_mode``). The "model" is a leaf
tensor ``delta_NT`` added to the rollout log-probs, so gradients can be compared with autograd of ``apo_loss``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

verl = pytest.importorskip("verl")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.workers.engine.utils import prepare_micro_batches  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding  # noqa: E402

from apo.core import ESSAlpha, apo_loss, boltzmann_log_target, make_groups, sequence_logprob  # noqa: E402
from apo.integrations.verl import algos, payload  # noqa: E402
from apo.integrations.verl.config import APOPolicyLossConfig  # noqa: E402

pytestmark = pytest.mark.verl

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
RUN_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "examples", "verl", "run_qwen3_1.7b_math_l3.sh")
B, G, T, P = 6, 4, 10, 5  # prompts, completions per prompt, response width, prompt width
N = B * G


@pytest.fixture(autouse=True)
def fresh_schedules():
    algos._SCHEDULES.clear()
    yield
    algos._SCHEDULES.clear()


def compose_config(micro: int, loss_mode: str = "apo", estimator: str = "apo_group", extra=()):
    """The real ppo_trainer.yaml with the overrides of examples/verl (one mini-batch = the whole batch)."""
    overrides = [
        f"actor_rollout_ref.rollout.n={G}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={B}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.actor.policy_loss._target_=apo.integrations.verl.config.APOPolicyLossConfig",
        f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}",
        "+actor_rollout_ref.actor.policy_loss.tau_anchor=0.8",
        "+actor_rollout_ref.actor.policy_loss.beta_reward=0.7",
        "+algorithm.apo=${actor_rollout_ref.actor}",
        f"algorithm.adv_estimator={estimator}",
        "trainer.balance_batch=false",
        "trainer.use_v1=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def make_rollout(seed: int = 0):
    """A rollout batch as the legacy trainer holds it before the advantage step (groups in contiguous blocks)."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(1, P + 1, (N,), generator=g)
    resp_len = torch.randint(1, T + 1, (N,), generator=g)
    resp_len[0] = T  # a response that fills the width (its last tokens carry the payload)
    resp_len[1] = 1
    prompt_mask = torch.arange(P).unsqueeze(0) >= (P - prompt_len).unsqueeze(1)  # left padded
    response_mask = torch.arange(T).unsqueeze(0) < resp_len.unsqueeze(1)  # right padded
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    rewards_N = torch.rand(N, generator=g).round()  # binary, float32
    rewards_N[G : 2 * G] = 1.0  # one group without reward variance
    token_rewards = torch.zeros(N, T)
    token_rewards[torch.arange(N), resp_len - 1] = rewards_N
    old_log_probs = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    uids = [f"uid-{b}-{seed}" for b in range(B) for _ in range(G)]
    return {
        "prompts": torch.randint(3, 50, (N, P), generator=g),
        "responses": torch.randint(3, 50, (N, T), generator=g),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask.long(),
        "token_level_rewards": token_rewards,
        "old_log_probs": old_log_probs,
        "rewards_N": rewards_N,
        "uids": uids,
    }


def actor_step(cfg, rollout, advantages, delta_NT, micro: int, shuffle: bool = False):
    """One actor update as verl 0.9.1's legacy trainer + engine run it; returns the summed loss and the metrics."""
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    batch = {k: rollout[k] for k in ("prompts", "responses", "attention_mask", "position_ids", "response_mask")}
    batch["input_ids"] = torch.cat([rollout["prompts"], rollout["responses"]], dim=1)
    batch["old_log_probs"] = rollout["old_log_probs"]
    batch["advantages"] = advantages
    batch["row_id"] = torch.arange(N)  # to look the "model" output up; travels through verl's batching untouched
    td = left_right_2_no_padding(DataProto.from_dict(tensors=batch).to_tensordict())
    mini_batch_size = actor_cfg.ppo_mini_batch_size * actor_cfg.rollout_n
    tu.assign_non_tensor(td, global_batch_size=mini_batch_size)
    total, metrics = 0.0, []
    for mini in tu.make_iterator(td, mini_batch_size=mini_batch_size, epochs=1, seed=42,
                                 dataloader_kwargs={"shuffle": shuffle}):  # fmt: skip
        tu.assign_non_tensor(
            mini, batch_num_tokens=int(mini["loss_mask"].sum()), dp_size=1, use_dynamic_bsz=False,
            micro_batch_size_per_gpu=micro,
        )  # fmt: skip
        micro_batches, _ = prepare_micro_batches(mini)
        for mb in micro_batches:
            loss, m = ppo_loss(actor_cfg, {"log_probs": flat_log_probs(rollout, delta_NT, mb["row_id"])}, mb)
            total = total + loss
            metrics.append(m)
    return total, metrics


def flat_log_probs(rollout, delta_NT, rows):
    """Model output in verl's no-padding layout: per sequence, prompt then response tokens; response token t's
    log-prob sits at the position before it (what ``no_padding_2_padding`` slices back)."""
    pieces = []
    for r in rows.tolist():
        n_prompt = int(rollout["attention_mask"][r, :P].sum())
        n_resp = int(rollout["response_mask"][r].sum())
        lp = rollout["old_log_probs"][r, :n_resp] + delta_NT[r, :n_resp]
        pieces += [torch.zeros(n_prompt - 1, dtype=lp.dtype), lp, torch.zeros(1, dtype=lp.dtype)]
    return torch.cat(pieces)


def library_apo(rollout, delta_NT, alpha, tau=0.8, beta=0.7, weight_clip=None):
    mask = rollout["response_mask"].bool()
    groups = make_groups(torch.arange(N) // G, G)
    seq = groups.gather(sequence_logprob(rollout["old_log_probs"] + delta_NT, mask))
    ref = groups.gather(sequence_logprob(rollout["old_log_probs"], mask))
    rewards = groups.gather(rollout["rewards_N"].double())
    return apo_loss(seq, ref, rewards, alpha=alpha, tau_anchor=tau, beta_reward=beta, weight_clip=weight_clip)


def estimate(cfg, rollout, name=None):
    fn = core_algos.get_adv_estimator_fn(name or cfg.algorithm.adv_estimator)
    adv, _ = fn(
        token_level_rewards=rollout["token_level_rewards"],
        response_mask=rollout["response_mask"],
        index=rollout["uids"],
        config=cfg.algorithm,
    )
    return adv


# ------------------------------------------------------------------------------------------------------------------


def test_entry_point_registers_in_a_fresh_process():
    code = (
        "import sys, verl\n"
        "from importlib.metadata import entry_points\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as L, ADV_ESTIMATOR_REGISTRY as A\n"
        "assert 'apo' in {e.name for e in entry_points(group='verl.plugins')}\n"
        "assert {'apo', 'adpo'} <= set(L) and {'apo', 'apo_group'} <= set(A), (sorted(L), sorted(A))\n"
        "assert 'apo.integrations.verl.config' in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_policy_loss_target_selects_the_apo_settings():
    cfg = compose_config(micro=G, extra=["+actor_rollout_ref.actor.policy_loss.alpha=0.37"])
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor_cfg.policy_loss, APOPolicyLossConfig)
    assert (actor_cfg.policy_loss.alpha, actor_cfg.policy_loss.tau_anchor) == (0.37, 0.8)
    settings, _ = algos.estimator_settings(cfg.algorithm)  # the estimator reads the same section
    assert (settings.alpha, settings.beta_reward) == (0.37, 0.7)
    bad = compose_config(micro=G, extra=["+actor_rollout_ref.actor.policy_loss.alpah=0.5"])
    with pytest.raises(Exception, match="alpah"):
        omega_conf_to_dataclass(bad.actor_rollout_ref.actor)
    with pytest.raises(Exception, match="alpha must be in"):
        APOPolicyLossConfig(loss_mode="apo", alpha=1.5)


def test_policy_loss_defaults_are_the_papers_and_bad_values_fail_when_built():
    assert APOPolicyLossConfig(loss_mode="apo").tau_anchor == 0.8  # Sec. 7, as APOConfig
    with pytest.raises(ValueError, match=r"^policy_loss\.eps must be > 0, got 0"):
        APOPolicyLossConfig(loss_mode="apo", eps=0.0)
    # Through verl's own builder: the error comes when the actor config is built, before any step.
    for key, value in [("eps", -1.0), ("alpha_ema", 0.0), ("weight_clip", "[0.5,0.9]")]:
        bad = compose_config(micro=G, extra=[f"+actor_rollout_ref.actor.policy_loss.{key}={value}"])
        with pytest.raises(Exception, match=rf"policy_loss\.{key}"):
            omega_conf_to_dataclass(bad.actor_rollout_ref.actor)


@pytest.mark.parametrize("micro", [G, 2 * G, N], ids=["micro=P", "micro=2P", "micro=batch"])
def test_group_loss_equals_library_loss_and_gradient(micro):
    """Policy moved away from the rollout (u != 0): the exact APO loss, whatever the micro-batch size."""
    cfg = compose_config(micro=micro, extra=["+actor_rollout_ref.actor.policy_loss.alpha=0.37"])
    rollout = make_rollout()
    advantages = estimate(cfg, rollout)
    delta = (0.3 * torch.randn(N, T, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
    loss, metrics = actor_step(cfg, rollout, advantages, delta, micro)
    (grad,) = torch.autograd.grad(loss, delta)

    delta_ref = delta.detach().clone().requires_grad_()
    ref_loss, ref_metrics = library_apo(rollout, delta_ref, alpha=0.37)
    (ref_grad,) = torch.autograd.grad(ref_loss, delta_ref)
    assert float(ref_metrics["apo/u_abs_max"]) > 0.1  # the anchored policy is not uniform here
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert all(m["apo/alpha"].values == pytest.approx([0.37], abs=1e-14) for m in metrics)  # the configured alpha
    if micro == G:  # group 1 has no reward variance: its micro-batch has no ESS over signal groups, and all else
        assert [("apo/ess_signal" in m) for m in metrics] == [b != 1 for b in range(B)]
        assert all("apo/divergence" in m and "apo/weight_var" in m for m in metrics)


def test_adpo_group_loss_equals_library():
    cfg = compose_config(micro=2 * G, loss_mode="adpo")
    rollout = make_rollout(seed=3)
    delta = (0.2 * torch.randn(N, T, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).requires_grad_()
    loss, _ = actor_step(cfg, rollout, estimate(cfg, rollout), delta, micro=2 * G)
    mask = rollout["response_mask"].bool()
    seq = sequence_logprob(rollout["old_log_probs"] + delta.detach(), mask).view(B, G)
    ref = sequence_logprob(rollout["old_log_probs"], mask).view(B, G)
    log_q = boltzmann_log_target(rollout["rewards_N"].double().view(B, G), 0.7)
    expected = -(log_q.exp() * torch.log_softmax((seq - ref) / 0.8, -1)).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-10, atol=1e-12)


def test_a_group_objective_by_path_runs_through_verls_loss():
    """loss_mode=objective: ADPO's own function named by its path gives ADPO's loss through verl's ppo_loss, with its
    metrics under the function's name."""
    path = '"apo.core.objectives:adpo_loss"'
    kwargs = "{tau_anchor:0.8,beta_reward:0.7}"
    cfg = compose_config(
        micro=2 * G,
        loss_mode="objective",
        extra=[
            f"+actor_rollout_ref.actor.policy_loss.objective={path}",
            f"+actor_rollout_ref.actor.policy_loss.objective_kwargs={kwargs}",
        ],
    )
    rollout = make_rollout(seed=3)
    delta = (0.2 * torch.randn(N, T, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).requires_grad_()
    loss, metrics = actor_step(cfg, rollout, estimate(cfg, rollout), delta, micro=2 * G)
    by_name, _ = actor_step(
        compose_config(micro=2 * G, loss_mode="adpo"), rollout, estimate(cfg, rollout), delta, micro=2 * G
    )
    torch.testing.assert_close(loss.detach(), by_name.detach(), rtol=1e-12, atol=1e-14)
    assert all("adpo_loss/adpo/cross_entropy" in m for m in metrics)


def test_scheduled_alpha_reaches_the_loss():
    """ess schedule: the alpha the loss reports is the schedule's alpha for this rollout's groups at u = 0."""
    cfg = compose_config(
        micro=G,
        extra=[
            "+actor_rollout_ref.actor.policy_loss.alpha_schedule=ess",
            "+actor_rollout_ref.actor.policy_loss.ess_target=0.8",
        ],
    )
    rollout = make_rollout()
    advantages = estimate(cfg, rollout)
    rewards_BG = rollout["rewards_N"].double().view(B, G)
    expected = ESSAlpha(0.35, 0.9, 0.8).update(
        rewards_BG=rewards_BG,
        log_q_BG=boltzmann_log_target(rewards_BG, 0.7),
        log_p_BG=torch.full((B, G), -torch.log(torch.tensor(float(G))).item(), dtype=torch.float64),
    )
    assert 0.35 <= expected < 0.9
    assert payload.decode(advantages).alpha == pytest.approx(expected, abs=1e-14)
    _, metrics = actor_step(cfg, rollout, advantages, torch.zeros(N, T, dtype=torch.float64), micro=G)
    assert metrics[0]["apo/alpha"].values == pytest.approx([expected], abs=1e-14)


def test_micro_batch_that_splits_a_group_is_rejected():
    micro = 6  # divides N = 24, but G = 4 does not divide it
    rollout = make_rollout()
    cfg = compose_config(micro=G)  # the estimator's check of ppo_micro_batch_size_per_gpu passes ...
    advantages = estimate(cfg, rollout)
    with pytest.raises(ValueError, match="broken groups.*ppo_micro_batch_size_per_gpu"):  # ... the loss catches it
        actor_step(cfg, rollout, advantages, torch.zeros(N, T, dtype=torch.float64), micro=micro)
    with pytest.raises(ValueError, match="not a multiple of G=4"):  # and the estimator names the setting early
        estimate(compose_config(micro=micro), rollout)


def test_shuffled_order_is_detected():
    cfg = compose_config(micro=N)  # whole groups in one micro-batch, but rows permuted by the actor's shuffle
    rollout = make_rollout()
    advantages = estimate(cfg, rollout)
    with pytest.raises(ValueError, match="out of rollout order.*shuffle=false"):
        actor_step(cfg, rollout, advantages, torch.zeros(N, T, dtype=torch.float64), micro=N, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=true"):
        estimate(compose_config(micro=N, extra=["actor_rollout_ref.actor.shuffle=true"]), rollout)


def test_reordered_rollout_batch_is_rejected_by_the_estimator():
    """trainer.balance_batch=true reorders rows before the advantage step: groups are no longer contiguous."""
    rollout = make_rollout()
    rollout["uids"] = [rollout["uids"][i] for i in torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(ValueError, match="contiguous block.*balance_batch=false"):
        estimate(compose_config(micro=G), rollout)


@pytest.mark.parametrize("setting", ["trainer.balance_batch=true", "trainer.use_v1=true"])
def test_trainer_settings_that_reorder_rows_stop_the_estimator(setting):
    """verl's defaults for these two are true, and both reorder rows before the advantage step (balance_batch sorts by
    length even on one rank). The estimator reads them through the root of the config verl hands it and names the
    one to change, here on a batch whose rows are still in order."""
    with pytest.raises(ValueError, match=f"settings that break groups: {re.escape(setting)}"):
        estimate(compose_config(micro=G, extra=[setting]), make_rollout())


def test_group_loss_without_payload_names_the_estimator():
    cfg = compose_config(micro=G)
    rollout = make_rollout()
    grpo_adv, _ = core_algos.compute_grpo_outcome_advantage(
        rollout["token_level_rewards"], rollout["response_mask"], rollout["uids"]
    )
    with pytest.raises(ValueError, match="adv_estimator=apo_group.*use_v1=false"):
        actor_step(cfg, rollout, grpo_adv, torch.zeros(N, T, dtype=torch.float64), micro=G)


@pytest.mark.parametrize(
    ("alpha", "weight_clip"), [(0.0, None), (0.35, None), (0.9, None), (1.0, None), (0.6, (0.8, 1.5))]
)
def test_advantage_mode_gives_the_apo_gradient_at_the_old_policy(alpha, weight_clip):
    """adv_estimator=apo + verl's vanilla PPO loss, shuffled, micro-batches that split groups: at u = 0 the
    gradient is autograd's gradient of apo_loss."""
    extra = [
        f"+actor_rollout_ref.actor.policy_loss.alpha={alpha}",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum",
    ]
    if weight_clip is not None:
        extra.append(f"+actor_rollout_ref.actor.policy_loss.weight_clip=[{weight_clip[0]},{weight_clip[1]}]")
    cfg = compose_config(micro=6, loss_mode="vanilla", estimator="apo", extra=extra)
    rollout = make_rollout()
    advantages = estimate(cfg, rollout)
    delta = torch.zeros(N, T, dtype=torch.float64, requires_grad=True)
    loss, _ = actor_step(cfg, rollout, advantages.double(), delta, micro=6, shuffle=True)
    (grad,) = torch.autograd.grad(loss, delta)

    delta_ref = torch.zeros(N, T, dtype=torch.float64, requires_grad=True)
    ref_loss, _ = library_apo(rollout, delta_ref, alpha=alpha, weight_clip=weight_clip)
    (ref_grad,) = torch.autograd.grad(ref_loss, delta_ref)
    mask = rollout["response_mask"].bool()
    assert grad[~mask].abs().max() == 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-8)  # advantages pass through float32


def test_advantage_mode_rejects_a_token_aggregation_that_breaks_exactness():
    cfg = compose_config(micro=G, loss_mode="vanilla", estimator="apo")  # verl's default token-mean
    with pytest.raises(ValueError, match="loss_agg_mode=seq-mean-token-sum"):
        estimate(cfg, make_rollout())
    with pytest.raises(ValueError, match="use algorithm.adv_estimator=apo_group"):
        estimate(compose_config(micro=G, loss_mode="apo", estimator="apo"), make_rollout())


def test_on_policy_advantages_are_continuous_at_alpha_zero():
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.2, 0.9, 0.4, 0.4]], dtype=torch.float64)
    at0 = algos.on_policy_advantages(rewards, alpha=0.0, tau_anchor=1.0, beta_reward=1.0)
    near0 = algos.on_policy_advantages(rewards, alpha=1e-7, tau_anchor=1.0, beta_reward=1.0)
    torch.testing.assert_close(at0, near0, rtol=0, atol=1e-6)
    assert at0.sum(-1).abs().max() < 1e-12  # centred in each group


@pytest.mark.parametrize("mode", ["group", "adv"])
def test_run_script_settings_reach_the_apo_config(mode):
    """The example script's overrides compose against verl's real config (Hydra ``--cfg job``: nothing runs)."""
    env = {**os.environ, "MODE": mode, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    done = subprocess.run(["bash", RUN_SCRIPT, "--cfg", "job"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = OmegaConf.create(done.stdout)
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    settings, _ = algos.estimator_settings(cfg.algorithm)
    for s in (actor_cfg.policy_loss, settings):
        assert isinstance(s, APOPolicyLossConfig)
        assert (s.alpha_schedule, s.alpha_min, s.alpha_max, s.tau_anchor, s.beta_reward) == (
            "guarded",
            0.35,
            0.9,
            0.8,
            1.0,
        )
        assert (s.alpha_ema, s.baseline_ema, s.reward_scale) == (0.1, 0.1, 0.5)
    assert cfg.actor_rollout_ref.rollout.n == 8 and cfg.data.max_response_length == 1024
    assert cfg.data.train_batch_size == cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 128
    assert cfg.actor_rollout_ref.actor.optim.lr == 1.5e-5 and cfg.trainer.total_epochs == 2
    assert cfg.trainer.use_v1 is False
    if mode == "group":
        assert cfg.algorithm.adv_estimator == "apo_group" and actor_cfg.policy_loss.loss_mode == "apo"
        assert cfg.trainer.balance_batch is False and actor_cfg.shuffle is False and actor_cfg.use_dynamic_bsz is False
        assert actor_cfg.ppo_micro_batch_size_per_gpu % 8 == 0
    else:
        assert cfg.algorithm.adv_estimator == "apo" and actor_cfg.policy_loss.loss_mode == "vanilla"
        assert actor_cfg.loss_agg_mode == "seq-mean-token-sum"
