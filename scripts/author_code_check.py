"""Run the paper's public APO loss next to :func:`apo.core.author.author_loss` on the same inputs, in every branch.

The author's code is not part of this project: clone the repository ``wk222/verlm`` (GitHub) at commit ``b79d8f4``
and pass the file::

    git -C verlm show b79d8f4:verl/trainer/adpo/core_algos.py > /tmp/author_core_algos.py
    PYTHONPATH=src .venv-verl/bin/python scripts/author_code_check.py /tmp/author_core_algos.py

It needs verl 0.9.1 importable (the author's module imports ``verl.trainer.ppo.core_algos``' registries and
``verl.utils.as_torch_index``; ``.ci/run``'s verl environment has it). The actor config the loss reads is built as
verl builds it: ``actor_rollout_ref.actor.policy_loss`` holds the fields of the author's ``PolicyLossConfig``
(``verl/workers/config/actor.py`` lines 82-123: every default written out below) with what the YAML sets under
``policy_loss:`` (``loss_mode: adpo``, ``num_generations: 6``); keys set under ``algorithm:`` do not reach it.

For each case the script prints the loss of both and the largest difference of their gradients with respect to the
token log-probs, and the branch the author's code reports (``adpo/alphapo_on_policy_fix``). Cases: the batch as
verl's trainer sends it (``q_target`` precomputed, ``ray_trainer.py`` lines 265-308) with ``loss_variant`` left at
its default and set to ``alphapo``; and without ``q_target``, off-policy and on-policy (the switch).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

from apo.core.author import author_loss

POLICY_LOSS_CONFIG = {  # the author's PolicyLossConfig defaults (verl/workers/config/actor.py, lines 82-123)
    "loss_mode": "adpo",
    "loss_variant": "softmax",
    "num_generations": 6,
    "use_precomputed_q": False,
    "tau": 0.5,
    "beta_reward": 0.3,
    "clip_anchored_score": 10.0,
    "clip_log_ratio": 5.0,
    "use_length_normalization": True,
    "grad_scale_factor": 20.0,
    "logit_reg_coef": 0.01,
    "use_q_center": True,
    "use_adaptive_tau": False,
    "adaptive_tau_alpha": 0.2,
    "adaptive_tau_beta": 0.5,
    "adaptive_tau_min": 0.2,
    "adaptive_tau_max": 1.5,
    "vocab_size": 32000,
    "grad_clip_value": 0.0,
    "softmax_coef_A": 1.0,
    "softmax_coef_B": 0.0,
    "softmax_coef_C": 0.0,
    "pl_top_k": 0,
    "pl_temperature": 1.0,
    "pl_label_smoothing": 0.0,
    "use_poly_loss": False,
    "poly_epsilon": 1.0,
    "use_delayed_softmax": False,
}


def load(path: str):
    spec = importlib.util.spec_from_file_location("author_core_algos", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INTENDED = {  # what alphapo_qwen3_math.yaml sets under algorithm:, as if it reached policy_loss
    "use_adaptive_alpha": True,
    "alpha_max": 0.9,
    "alpha_min": 0.35,
    "use_adaptive_tau": True,
    "use_q_center": False,
    "vocab_size": 151936,
}


def case(module, name: str, *, variant: str, precomputed_q: bool, on_policy: bool, intended: bool = False) -> None:
    from omegaconf import OmegaConf

    G, T = 6, 12
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, T + 1, (G,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    logp = (-torch.rand(G, T, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    old = logp.detach() if on_policy else logp.detach() + 0.3 * torch.randn(G, T, generator=gen, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = rewards - rewards.mean()  # compute_adpo_advantages with scale_rewards: False (the config's)
    settings = {**POLICY_LOSS_CONFIG, "loss_variant": variant, **(INTENDED if intended else {})}
    config = OmegaConf.create({"policy_loss": settings})
    kwargs = {"q_target": torch.softmax(adv / 0.3, dim=0)} if precomputed_q else {}
    loss_a, metrics = module.adpo_policy_loss(old, logp, adv, mask, config=config, **kwargs)
    (grad_a,) = torch.autograd.grad(loss_a, logp)

    def mean_scores(x):
        return ((x * mask).sum(-1) / mask.sum(-1))[None, :]

    path = "precomputed-q" if precomputed_q else "alphapo"
    ours_kw = {}
    if intended:
        ours_kw = dict(adaptive_alpha=True, adaptive_tau=True, q_center=False, vocab_size=INTENDED["vocab_size"])
    loss_b, ours = author_loss(mean_scores(logp), mean_scores(old), rewards[None, :], path=path, **ours_kw)
    (grad_b,) = torch.autograd.grad(loss_b, logp)
    print(
        f"{name:48s} author {loss_a.item():+.10f}  apo.core.author {loss_b.item():+.10f}  "
        f"max |grad diff| {(grad_a - grad_b).abs().max().item():.2e}  "
        f"author switch {metrics['adpo/alphapo_on_policy_fix']:.0f}  ours {ours['apo_author/switch_frac'].item():.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("core_algos", help="the author's verl/trainer/adpo/core_algos.py")
    module = load(parser.parse_args().core_algos)
    torch.manual_seed(0)
    cases = [  # (name, loss_variant, q_target precomputed, on-policy)
        ("trainer's batch (q_target), loss_variant default", "softmax", True, False),
        ("trainer's batch (q_target), loss_variant=alphapo", "alphapo", True, False),
        ("trainer's batch, alphapo, on-policy", "alphapo", True, True),
        ("no q_target, loss_variant=alphapo, off-policy", "alphapo", False, False),
        ("no q_target, loss_variant=alphapo, on-policy", "alphapo", False, True),
    ]
    for name, variant, precomputed_q, on_policy in cases:
        case(module, name, variant=variant, precomputed_q=precomputed_q, on_policy=on_policy)
    for on_policy in (False, True):
        name = f"no q_target, alphapo, the YAML's keys, {'on' if on_policy else 'off'}-policy"
        case(module, name, variant="alphapo", precomputed_q=False, on_policy=on_policy, intended=True)


if __name__ == "__main__":
    sys.exit(main())
