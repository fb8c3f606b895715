"""APO as the paper's public code computes it, re-written from a reading of that code, beside the paper's APO
(:func:`apo.core.objectives.apo_loss`) for comparison.

Source: repository ``wk222/verlm`` (commit ``b79d8f4``), ``verl/trainer/adpo/core_algos.py``, function
``adpo_policy_loss`` (lines 438-1234), with its settings from ``verl/workers/config/actor.py`` (``PolicyLossConfig``,
lines 31-123) and the advantage estimator ``compute_adpo_advantages`` (lines 228-324). Every line number below is in
``core_algos.py`` unless another file is named.

What the code does, in the order it does it, per micro-batch (the paper's config ``alphapo_qwen3_math.yaml`` has
``ppo_micro_batch_size_per_gpu: 6 = rollout.n``: one group per micro-batch; here every group is its own
micro-batch, and the loss is the mean over groups):

1. Sequence scores ``s`` are length-normalised means of token log-probs (``use_length_normalization: True``,
   lines 535-542); the paper's ``l_i`` is the sum. Pass mean scores (``sequence_score: mean``).
2. Advantages ``A = r - mean(r)`` (``scale_rewards: False`` in the config; ``True`` z-scores with the unbiased std,
   a std below 1e-8 replaced by 1; lines 255-262), target ``q = softmax(A / beta_r)`` (line 748; precomputed with the
   same formula by ``verl/trainer/ppo/ray_trainer.py`` lines 265-308).
3. ``log_ratio = clamp(s - s_old, -5, 5)`` (``clip_log_ratio``, lines 544-549); ``u = clamp(log_ratio / tau, -10,
   10)`` (``clip_anchored_score``, lines 609-614); optionally ``u <- u - sum(q u)`` with the centre detached
   (``use_q_center``, lines 792-800).
4. Adaptive tau and alpha (lines 557-604), per micro-batch: ``h_static = mean clamp(-s_old / ln V, 0, 1)``,
   ``conf = 1 - mean clamp(-s / ln V, 0, 1)``, ``signal = 2 mean((A - min A) / max(max A - min A, 1e-6)) - 1``;
   ``tau_eff = clamp(tau (1 + a_tau h_static + b_tau conf (-signal)), tau_min, tau_max)``;
   ``alpha_eff = alpha_max - (alpha_max - alpha_min) conf max(signal, 0)``.
5. The loss, by branch:

   - ``path="alphapo"`` (``loss_variant: alphapo``, lines 864-938): when ``mean |log_ratio| < 0.01`` and
     ``std(u) < 0.01`` (every on-policy step) the loss is ``-sum_i w_i s_i - 0.01 H(p)`` with
     ``w = normalize(q^alpha p^(1-alpha))`` detached and ``s_i`` the (unclipped) score, ``H(p)`` the entropy of
     ``p = softmax(u)``: a likelihood weighted by positive weights, with no baseline; otherwise Theorem 4.1's
     surrogate ``-(1/alpha) sum_i q_i^alpha p_i^(1-alpha) log p_i`` (weights detached, ``eps = 1e-10`` added to
     ``q`` and ``p`` before the powers).
   - ``path="precomputed-q"`` (lines 838-853): ``-sum_i q_i u_i + logsumexp(u)``, the ADPO-Softmax cross-entropy.
     The code takes this branch for every ``loss_variant`` other than ``plackett_luce`` and ``decoupled`` whenever
     the batch carries a precomputed ``q_target``, and the trainer precomputes one whenever ``adv_estimator`` is
     ``adpo`` (``ray_trainer.py`` lines 265-308, sent to the loss by ``verl/workers/actor/dp_actor.py`` lines
     401-403 and 473-503); the ``alphapo`` branch comes after it in the ``elif`` chain and is not reached.

6. ``logit_reg_coef (logsumexp u)^2`` is added (lines 1174-1186; ``PolicyLossConfig``'s default 0.01).

The settings the loss reads come from ``actor_rollout_ref.actor.policy_loss`` (``_cfg``, lines 468-476), whose
defaults are ``PolicyLossConfig``'s: ``loss_variant: softmax``, ``tau 0.5``, ``beta_reward 0.3``, ``use_q_center:
True``, ``use_adaptive_tau: False``, ``vocab_size 32000``; ``alpha`` and ``use_adaptive_alpha`` are not fields of it
and fall back to ``0.5`` and ``False``. ``alphapo_qwen3_math.yaml`` sets ``loss_variant``, ``alpha``,
``use_adaptive_alpha``, ``use_adaptive_tau``, ``use_q_center``... under ``algorithm:``, which the advantage step
reads (``beta_reward``, ``scale_rewards``) and the loss does not.

Departures of this re-writing: the switch, the adaptive tau/alpha and the logit term are computed per group (the
code: per micro-batch, which the paper's config makes one group); no cross-rank gathering (groups are whole here).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .targets import check_finite

AUTHOR_PATHS = ("alphapo", "precomputed-q")
"""The two branches of the author's loss that an APO run can reach (module docstring, step 5)."""


def author_advantages(rewards_BG: Tensor, *, scale_rewards: bool = False) -> Tensor:
    """``[B, G]`` advantages of ``compute_adpo_advantages``: ``r - mean_g(r)``, divided by the unbiased group std when
    ``scale_rewards`` (a std below 1e-8, or a group of one, replaced by 1)."""
    centred = rewards_BG - rewards_BG.mean(-1, keepdim=True)
    if not scale_rewards:
        return centred
    G = rewards_BG.shape[-1]
    std = rewards_BG.std(-1, keepdim=True, unbiased=True) if G > 1 else torch.ones_like(rewards_BG[..., :1])
    return centred / torch.where(std < 1e-8, torch.ones_like(std), std)


def _adaptive(s_BG: Tensor, old_BG: Tensor, adv_BG: Tensor, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``([B] h_static, [B] confidence, [B] reward signal)`` of step 4 (all detached)."""
    with torch.no_grad():
        log_v = math.log(vocab_size)
        h_static = (-old_BG / log_v).clamp(0.0, 1.0).mean(-1)
        confidence = 1.0 - (-s_BG / log_v).clamp(0.0, 1.0).mean(-1)
        lo, hi = adv_BG.min(-1, keepdim=True).values, adv_BG.max(-1, keepdim=True).values
        signal = 2.0 * ((adv_BG - lo) / (hi - lo).clamp(min=1e-6)).mean(-1) - 1.0
    return h_static, confidence, signal


def author_loss(
    logp_BG: Tensor,
    old_logp_BG: Tensor,
    rewards_BG: Tensor,
    *,
    path: str = "alphapo",
    alpha: float = 0.5,
    adaptive_alpha: bool = False,
    alpha_min: float = 0.35,
    alpha_max: float = 0.9,
    tau: float = 0.5,
    adaptive_tau: bool = False,
    adaptive_tau_alpha: float = 0.2,
    adaptive_tau_beta: float = 0.5,
    tau_min: float = 0.2,
    tau_max: float = 1.5,
    beta_reward: float = 0.3,
    scale_rewards: bool = False,
    clip_log_ratio: float = 5.0,
    clip_anchored_score: float = 10.0,
    q_center: bool = True,
    logit_reg: float = 0.01,
    entropy_bonus: float = 0.01,
    switch_threshold: float = 0.01,
    vocab_size: int = 32000,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The author's APO loss on ``[B, G]`` sequence scores (module docstring; defaults: ``PolicyLossConfig``'s).

    Args:
        logp_BG: ``[B, G]`` policy sequence scores with gradient (length-normalised in the author's code).
        old_logp_BG: ``[B, G]`` the anchor's (pi_old) scores.
        rewards_BG: ``[B, G]`` raw rewards of whole groups.
        path: ``"alphapo"`` (the branch written for APO, with its on-policy switch) or ``"precomputed-q"`` (the
            cross-entropy branch the paper's configs reach).

    Returns:
        ``(loss, metrics)``: the mean over groups of each group's loss plus ``logit_reg * logsumexp(u)^2``;
        ``metrics`` under ``apo_author/``: ``switch_frac`` (groups on which the on-policy switch fired), ``alpha``,
        ``tau`` (means over groups of the effective values), ``log_ratio_abs_mean``, ``u_std``, ``logit_reg``.
    """
    if path not in AUTHOR_PATHS:
        raise ValueError(f"path={path!r}: valid {AUTHOR_PATHS}")
    check_finite("rewards", rewards_BG)
    B = logp_BG.shape[0]
    adv = author_advantages(rewards_BG.to(logp_BG.dtype), scale_rewards=scale_rewards)
    q = torch.softmax(adv / beta_reward, dim=-1)
    log_ratio = logp_BG - old_logp_BG
    if clip_log_ratio > 0:
        log_ratio = log_ratio.clamp(-clip_log_ratio, clip_log_ratio)
    h_static, confidence, signal = _adaptive(logp_BG.detach(), old_logp_BG, adv, vocab_size)
    ones = torch.ones(B, dtype=logp_BG.dtype, device=logp_BG.device)
    tau_B = tau * ones
    if adaptive_tau:
        modulation = 1.0 + adaptive_tau_alpha * h_static + adaptive_tau_beta * confidence * (-signal)
        tau_B = (tau * modulation).clamp(tau_min, tau_max)
    alpha_B = alpha * ones
    if adaptive_alpha:
        alpha_B = alpha_max - (alpha_max - alpha_min) * confidence * signal.clamp(min=0.0)
    u = log_ratio / tau_B[:, None]
    if clip_anchored_score > 0:
        u = u.clamp(-clip_anchored_score, clip_anchored_score)
    if q_center:
        u = u - (q * u).sum(-1, keepdim=True).detach()
    log_z = torch.logsumexp(u, dim=-1)
    log_p = u - log_z[:, None]
    switch = torch.zeros(B, dtype=torch.bool, device=logp_BG.device)
    if path == "precomputed-q":
        per_group = -(q * u).sum(-1) + log_z
    else:
        switch = (log_ratio.detach().abs().mean(-1) < switch_threshold) & (u.detach().std(-1) < switch_threshold)
        p = log_p.exp()
        a = alpha_B[:, None]
        w = (q + 1e-10) ** a * (p.detach() + 1e-10) ** (1.0 - a)
        w_norm = w / (w.sum(-1, keepdim=True) + 1e-10)
        entropy = -(p * log_p).sum(-1)
        on_policy = -(w_norm.detach() * logp_BG).sum(-1) - entropy_bonus * entropy
        off_policy = -(w.detach() * log_p).sum(-1) / alpha_B
        per_group = torch.where(switch, on_policy, off_policy)
    logit_term = logit_reg * log_z**2
    loss = (per_group + logit_term).mean()
    metrics = {
        "apo_author/switch_frac": switch.float().mean().detach(),
        "apo_author/alpha": alpha_B.mean().detach(),
        "apo_author/tau": tau_B.mean().detach(),
        "apo_author/log_ratio_abs_mean": log_ratio.detach().abs().mean(),
        "apo_author/u_std": u.detach().std(-1).mean() if u.shape[-1] > 1 else u.new_zeros(()),
        "apo_author/logit_reg": logit_term.mean().detach(),
    }
    return loss, metrics
