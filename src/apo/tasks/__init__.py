"""Tasks, rewards and offline models.

- ``apo.tasks.arithmetic``: generated arithmetic problems with a fixed train / held-out split.
- ``apo.tasks.datasets``: ``load_task`` (arith, reasoning-gym generators, MATH-style files or hub ids).
- ``apo.tasks.rewards``: TRL reward functions (bounded in time), ``safe_reward``, ``load_reward``.
- ``apo.tasks.grading``: answer extraction (``answer_format``: boxed | final | auto) and equivalence.
- ``apo.tasks.bounded``: the grader process with a time limit, ``safe_reward``'s worker; children die with the parent.
- ``apo.tasks.evaluate``: ``evaluate``, a policy's held-out reward and coverage (``apo.tasks.evaluation``: pass@k,
  distinct answers, token entropy), each with its interval over prompts.
- ``apo.tasks.tiny``: the tiny arithmetic Llama and its tokenizer; ``prepare_tiny_arith``.
- ``apo.tasks.models``: ``resolve_model`` (``tiny-arith``, ``smollm2``, a folder, a hub id) and ``load_smollm2``.

Submodules are imported on demand so that ``import apo.tasks`` does not load torch or transformers.
"""
