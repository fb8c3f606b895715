"""Write what the CPU run needs into one folder (offline): the shipped tiny arithmetic Llama with a chat template,
and train/val parquet files of arithmetic prompts in verl's RL format.

    python examples/verl/cpu/prepare_tiny.py --out /tmp/apo_verl_cpu

``OUT/model`` is ``apo.tasks.tiny.SHIPPED_DIR`` (1.05M parameters, fp32, character tokenizer) plus a chat template
that writes ``<bos>`` and the user message, the format the model was trained on: verl's agent loop always applies
the tokenizer's chat template. Rows are ``apo.tasks.arithmetic`` problems (``37+58=`` -> ``95``); their reward is
``examples/verl/cpu/arith_reward.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

DATA_SOURCE = "apo/tiny-arith"
CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


def to_verl_row(row: dict, index: int, split: str) -> dict:
    """One arithmetic problem as a verl RL row."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": row["answer"]},
        "extra_info": {"split": split, "index": index},
    }


def write_model(out: str) -> str:
    """Copy the shipped tiny model to ``out/model`` with :data:`CHAT_TEMPLATE`; return the folder."""
    from apo.tasks.tiny import SHIPPED_DIR

    model_dir = os.path.join(out, "model")
    shutil.copytree(SHIPPED_DIR, model_dir, dirs_exist_ok=True)
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = CHAT_TEMPLATE
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return model_dir


def write_data(out: str, n_train: int, n_val: int, seed: int) -> None:
    """``out/train.parquet`` and ``out/val.parquet`` from the task's train and eval sides."""
    import pandas as pd

    from apo.tasks.arithmetic import ArithmeticTask, generate

    task = ArithmeticTask(ops=("+",), digits=2)
    for split, side, n in (("train", "train", n_train), ("val", "eval", n_val)):
        rows = [to_verl_row(r, i, split) for i, r in enumerate(generate(task, side, n, seed=seed))]
        pd.DataFrame(rows).to_parquet(os.path.join(out, f"{split}.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=32, help="training prompts")
    parser.add_argument("--val", type=int, default=8, help="validation prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(write_model(args.out))
    write_data(args.out, args.train, args.val, args.seed)


if __name__ == "__main__":
    main()
