"""Write MATH level-3 train/test parquet files in verl's RL format (needs network access to the Hugging Face hub).

    python examples/verl/prepare_math_l3.py --out ~/data/math_l3

Rows keep verl's MATH conventions (``data_source = DigitalLearningGmbH/MATH-lighteval``), so verl's default reward
``verl.utils.reward_score.math_reward`` scores them: 1 when the last ``\\boxed{}`` of the response matches the
reference answer, else 0 (the paper's binary rule-based reward).
"""

from __future__ import annotations

import argparse
import os

DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def to_verl_row(example: dict, index: int, split: str) -> dict:
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{example['problem']} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": remove_boxed(last_boxed_only_string(example["solution"]))},
        "extra_info": {"split": split, "index": index, "level": example["level"], "type": example["type"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.expanduser("~/data/math_l3"))
    parser.add_argument("--level", default="Level 3")
    args = parser.parse_args()

    import datasets

    os.makedirs(args.out, exist_ok=True)
    for split in ("train", "test"):
        ds = datasets.load_dataset(DATA_SOURCE, split=split).filter(lambda ex: ex["level"] == args.level)
        ds = ds.map(to_verl_row, with_indices=True, fn_kwargs={"split": split}, remove_columns=ds.column_names)
        path = os.path.join(args.out, f"{split}.parquet")
        ds.to_parquet(path)
        print(f"{split}: {len(ds)} problems -> {path}")


if __name__ == "__main__":
    main()
