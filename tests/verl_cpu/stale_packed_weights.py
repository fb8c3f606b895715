"""Negative control of tests/test_verl_main_ppo.py: vLLM's CPU engine stops re-packing its linear weights after the
first sync, so from the second step on it generates from the weights of step 1.

verl imports this module after ``apo_verl_cpu`` (both named in ``VERL_USE_EXTERNAL_MODULES``). The weights stay
loadable, so verl's ``load_weights`` (``verl/workers/rollout/vllm_rollout/utils.py:405``) succeeds as with the fix,
but the re-pack that verl's ``process_weights_after_loading`` (``utils.py:353``) triggers through
``vllm/model_executor/layers/linear.py:216`` happens only twice per layer: at load (dummy weights) and at the sync
before step 1. Step 1 then samples from the actor's weights and step 2 from stale ones: its
``training/rollout_probs_diff_max`` must show how far one optimizer step moved the policy.
"""

import apo_verl_cpu

apo_verl_cpu.max_packs = 2
