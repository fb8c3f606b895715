"""Group objectives by import path: a user's ``fn(logp_BG, old_logp_BG, rewards_BG, **objective_kwargs)`` written in
a file outside the package trains through ``APOTrainer`` and the installed ``apo train``, its settings checked before
any weights load; the built-in APO and ADPO go through the same contract (``apo.algorithms``)."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch
from conftest import FAST_DEFAULTS
from journey_tools import APO, SMALL, run_apo

import apo
from apo.algorithms import REGISTRY, batch_objective, get_algorithm, names, readers
from apo.core.objectives import adpo_loss, apo_loss, get_objective

LOSSES = '''
import torch


def listwise_ce(logp_BG, old_logp_BG, rewards_BG, *, temperature=1.0):
    """Cross-entropy from softmax(rewards / temperature) to softmax(logp - old_logp) over each group."""
    target_BG = torch.softmax(rewards_BG / temperature, dim=-1)
    log_p_BG = torch.log_softmax(logp_BG - old_logp_BG, dim=-1)
    loss = -(target_BG * log_p_BG).sum(-1).mean()
    return loss, {"cross_entropy": loss.detach()}


def needs_scale(logp_BG, old_logp_BG, rewards_BG, *, scale):
    return scale * logp_BG.sum() * 0.0, {}


not_a_function = 3
'''


@pytest.fixture
def losses_module(tmp_path, monkeypatch):
    """``user_losses.py`` in a folder outside the package, on ``sys.path`` (and ``PYTHONPATH`` for subprocesses)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "user_losses.py").write_text(textwrap.dedent(LOSSES))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    yield folder
    sys.modules.pop("user_losses", None)


def config(**overrides):
    return apo.APOConfig(**{**FAST_DEFAULTS, "output_dir": "/tmp/apo-test-config", **overrides})


def test_built_in_group_objectives_are_the_contract_s_functions():
    # APO and ADPO are fn(logp_BG, old_logp_BG, rewards_BG, **settings) like a user's objective
    assert REGISTRY["apo"].objective is apo_loss and REGISTRY["adpo"].objective is adpo_loss
    assert names("group") == ("apo", "adpo", "apo-author")
    assert readers("alpha") == ("apo",) and readers("tau_anchor") == ("apo", "adpo")
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(8, 5, generator=g), -torch.rand(8, 5, generator=g)
    mask, rewards, ids = torch.ones(8, 5), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.arange(8) // 4
    for name in ("apo", "adpo"):
        settings = {"alpha": 0.4} if name == "apo" else {}
        mine, _ = batch_objective(REGISTRY[name].objective)(logp, old, mask, rewards, ids, group_size=4, **settings)
        theirs, _ = get_objective(name)(logp, old, mask, rewards, ids, group_size=4, **settings)
        assert mine.item() == theirs.item()


def test_a_setting_the_objective_does_not_accept_is_named():
    logp = torch.zeros(4, 3)
    args = (logp, None, torch.ones(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="'adpo' does not accept the setting 'alpha'"):
        get_objective("adpo")(*args, alpha=0.5)
    with pytest.raises(ValueError, match="'apo' does not accept the setting 'tau'"):
        get_objective("apo")(*args, alpha=0.5, tau=0.8)


def test_an_objective_by_path_is_checked_when_the_config_is_built(losses_module):
    c = config(algorithm="user_losses:listwise_ce", objective_kwargs={"temperature": 0.5})
    assert c.algorithm == "user_losses:listwise_ce" and c.loss_type == "grpo"  # TRL's keys unused, as for apo
    from user_losses import listwise_ce

    assert config(algorithm=listwise_ce).algorithm == "user_losses:listwise_ce"  # a function: named by its path
    cases = [
        ({"objective_kwargs": {"temprature": 0.5}}, "does not accept the setting 'temprature'"),
        ({"algorithm": "user_losses:needs_scale"}, "needs the setting 'scale'"),
        ({"algorithm": "user_losses:not_a_function"}, r"'not_a_function' \(int\) is not callable"),
        ({"algorithm": "user_losses:missing"}, "has no attribute 'missing'"),
        ({"algorithm": "no_such_module:f"}, "cannot import 'no_such_module'"),
        ({"algorithm": "user_losses:listwise_ce", "tau_anchor": 0.8, "alpha_schedule": "ess"}, "has no alpha"),
        ({"algorithm": "apo", "objective_kwargs": {"alpha": 0.5}}, "objective_kwargs is read for a group objective"),
        ({"algorithm": lambda a, b, c: (a.sum(), {})}, "top level of a module"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            config(**{"algorithm": "user_losses:listwise_ce", **overrides})
    with pytest.raises(ValueError, match="three positional arguments"):
        get_algorithm("os.path:exists")


def test_an_objective_from_a_file_outside_the_package_trains_through_APOTrainer(losses_module, make_trainer):
    trainer = make_trainer(algorithm="user_losses:listwise_ce", objective_kwargs={"temperature": 0.5})
    trainer.train()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logs) == 2 and all(math_finite(row["listwise_ce/cross_entropy"]) for row in logs)
    assert not any(key.startswith("apo/") for row in logs for key in row)  # its metrics, under its name


def test_adpo_by_its_path_trains_as_adpo(make_trainer):
    # the built-in goes through the same contract: the same loss by name or by path, step for step
    by_name = make_trainer(algorithm="adpo", tau_anchor=0.8)
    by_name.train()
    by_path = make_trainer(
        algorithm="apo.core.objectives:adpo_loss", objective_kwargs={"tau_anchor": 0.8, "beta_reward": 1.0}
    )
    by_path.train()
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (by_name, by_path)]
    assert losses[0] == losses[1]
    assert [r["adpo_loss/adpo/cross_entropy"] for r in by_path.state.log_history if "loss" in r] == [
        r["adpo/cross_entropy"] for r in by_name.state.log_history if "loss" in r
    ]


def math_finite(x) -> bool:
    return x == x and abs(x) != float("inf")


@pytest.mark.skipif(not APO.exists(), reason=f"no installed apo console script at {APO}")
def test_an_objective_from_a_file_outside_the_package_trains_through_apo_train(losses_module, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    common = ["train", "algorithm=user_losses:listwise_ce", "alpha_schedule=fixed", *SMALL, "max_steps=2"]
    j = run_apo([*common, "objective_kwargs={temprature: 0.5}"], work, 600)
    assert j.code == 2, j.stderr[-2000:]
    assert j.stderr.strip().splitlines()[-1] == (
        "apo: error: algorithm 'user_losses:listwise_ce' does not accept the setting 'temprature' "
        "(objective_kwargs); it accepts: ['temperature']"
    )
    assert "Traceback" not in j.stderr and not list(work.iterdir())  # refused before anything was loaded or written
    run = work / "run"
    j = run_apo([*common, "objective_kwargs={temperature: 0.5}", f"output_dir={run}"], work, 600)
    assert j.code == 0, j.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("listwise_ce/cross_entropy" in row for row in rows)


def test_an_objective_by_path_is_compared_with_a_preset(losses_module, tmp_path):
    from apo.cli.main import main
    from apo.cli.presets import preset

    name = "user_losses:listwise_ce@objective_kwargs={temperature: 0.5}"
    assert preset(name) == {
        "algorithm": "user_losses:listwise_ce",
        "alpha_schedule": "fixed",
        "objective_kwargs": {"temperature": 0.5},
    }
    with pytest.raises(ValueError, match="'user_losses:listwise_ce' ignores tau_anchor"):
        preset("user_losses:listwise_ce@tau_anchor=0.5")
    out = tmp_path / "cmp"
    overrides = ["max_steps=2", "eval_size=16", "eval_samples=2", "save_strategy=no", "train_size=64"]
    assert main(["compare", *overrides, "--algorithms", f"adpo,{name}", "--seeds", "0", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert [r["algorithm"] for r in table["algorithms"]] == ["adpo", name]


def test_a_new_built_in_is_one_registry_entry(monkeypatch, make_trainer):
    # what adding a built-in group algorithm takes: its function and one entry (settings by objective_kwargs here)
    from apo.algorithms import GROUP, Algorithm

    def soft_ce(logp_BG, old_logp_BG, rewards_BG, *, temperature=1.0):
        loss = -(torch.softmax(rewards_BG / temperature, -1) * torch.log_softmax(logp_BG - old_logp_BG, -1)).sum(-1)
        return loss.mean(), {"soft_ce/loss": loss.mean().detach()}

    monkeypatch.setitem(REGISTRY, "soft_ce", Algorithm("soft_ce", GROUP, objective=soft_ce))
    with pytest.raises(ValueError, match="'soft_ce' does not accept the setting 'temp'"):
        config(algorithm="soft_ce", objective_kwargs={"temp": 2.0})
    trainer = make_trainer(algorithm="soft_ce", objective_kwargs={"temperature": 2.0})
    trainer.train()
    assert all("soft_ce/loss" in row for row in trainer.state.log_history if "loss" in row)
