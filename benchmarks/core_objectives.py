"""Cost of the whole APO path against the GRPO objective, on per-token inputs, forward + backward.

    python benchmarks/core_objectives.py [--groups 1024] [--group-size 8] [--tokens 256] [--repeats 15]

Both paths start from the same ``[N, T]`` per-token log-probs (requires grad), old log-probs, mask, rewards and
(shuffled) group ids, and end after ``backward()``:

* ``grpo``: group z-score advantages + token-level clipped ratio loss (``seq-mean-token-mean``) + its metrics;
* ``apo``: group verification, sequence scores, Boltzmann target, anchored policy, D_alpha, all ``apo/*``
  diagnostics, the ESS solve for the next alpha, and backward.

The ESS solve is also timed alone. The paths alternate within each repeat (so machine noise hits both alike); the
medians and their ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from apo.core import get_objective, make_groups, solve_ess_alpha, zero_variance_groups
from apo.core.divergence import anchored_log_policy
from apo.core.scores import sequence_logprob
from apo.core.targets import boltzmann_log_target


def make_inputs(B: int, G: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N = B * G
    old = -torch.rand(N, T, generator=g) * 3
    logp = (old + 0.01 * torch.randn(N, T, generator=g)).requires_grad_(True)
    lengths = torch.randint(T // 4, T + 1, (N,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randint(0, 2, (N,), generator=g).float()
    perm = torch.randperm(N, generator=g)
    group_ids = (torch.arange(N) // G)[perm]
    return logp, old, mask, rewards, group_ids


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1024)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, G, T = args.groups, args.group_size, args.tokens
    logp, old, mask, rewards, ids = make_inputs(B, G, T)
    grpo, apo_fn = get_objective("grpo"), get_objective("apo")

    def run_grpo():
        logp.grad = None
        loss, metrics = grpo(logp, old, mask, rewards, ids, group_size=G)
        loss.backward()
        return metrics

    def ess_solve(log_q_BG, log_p_BG, rewards_BG):
        return solve_ess_alpha(log_q_BG, log_p_BG, 0.5, 0.35, 0.9, signal_B=~zero_variance_groups(rewards_BG))

    def run_apo():
        logp.grad = None
        loss, metrics = apo_fn(logp, old, mask, rewards, ids, alpha=0.6, tau_anchor=0.8, group_size=G)
        loss.backward()
        # the next alpha, from the same step's groups (what the ess schedule does once per optimizer step)
        groups = make_groups(ids, G)
        with torch.no_grad():
            seq = groups.gather(sequence_logprob(logp.detach(), mask))
            ref = groups.gather(sequence_logprob(old, mask))
            r = groups.gather(rewards)
            ess_solve(boltzmann_log_target(r, 1.0), anchored_log_policy(seq, ref, 0.8), r)
        return metrics

    groups = make_groups(ids, G)
    with torch.no_grad():
        r_BG = groups.gather(rewards)
        log_q = boltzmann_log_target(r_BG, 1.0)
        log_p = anchored_log_policy(
            groups.gather(sequence_logprob(logp.detach() + 0.05, mask)),
            groups.gather(sequence_logprob(old, mask)),
            0.8,
        )

    for _ in range(3):  # warm-up
        run_grpo(), run_apo(), ess_solve(log_q, log_p, r_BG)
    t_grpo, t_apo, t_ess = [], [], []
    for _ in range(args.repeats):
        t_grpo.append(timed(run_grpo))
        t_apo.append(timed(run_apo))
        t_ess.append(timed(lambda: ess_solve(log_q, log_p, r_BG)))
    m_grpo, m_apo, m_ess = (statistics.median(t) * 1e3 for t in (t_grpo, t_apo, t_ess))
    print(
        f"inputs: {B * G} completions x {T} tokens ({B} groups x {G}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats (median)"
    )
    print(f"grpo objective, fwd+bwd        {m_grpo:8.2f} ms")
    print(f"apo path, fwd+bwd+ESS+metrics  {m_apo:8.2f} ms")
    print(f"ESS solve alone                {m_ess:8.2f} ms")
    print(f"ratio apo / grpo               {m_apo / m_grpo:8.3f}   (target <= 1.2)")
    print(f"ESS solve / apo path           {m_ess / m_apo:8.3f}   (target <= 0.10)")


if __name__ == "__main__":
    main()
