"""The verl policy-loss section's APO keys without verl: the paper's defaults (those of APOConfig) and one-line
errors naming ``policy_loss.<key>`` when the config is built."""

from __future__ import annotations

import dataclasses
import math

import pytest

from apo.integrations.verl.settings import APOLossSettings


def test_defaults_are_the_papers_and_the_trl_configs():
    from apo import APOConfig

    verl = APOLossSettings()
    trl = {f.name: f.default for f in dataclasses.fields(APOConfig)}
    assert verl.tau_anchor == 0.8  # Sec. 7 "Configuration"
    same = ("alpha_schedule", "alpha", "alpha_min", "alpha_max", "alpha_ema", "baseline_ema", "reward_scale")
    for name in (*same, "ess_target", "tau_anchor", "beta_reward", "sequence_score"):
        assert getattr(verl, name) == trl[name], name
    assert verl.eps == trl["reward_eps"] and verl.weight_clip is None


@pytest.mark.parametrize(
    "key, value",
    [
        ("eps", 0.0),
        ("eps", -1e-6),
        ("eps", math.nan),
        ("tau_anchor", 0.0),
        ("beta_reward", -1.0),
        ("reward_scale", math.inf),
        ("alpha", 1.5),
        ("alpha", True),
        ("alpha_min", -0.1),
        ("alpha_max", "0.9"),
        ("alpha_ema", 0.0),
        ("baseline_ema", 1.5),
        ("ess_target", 0.0),
        ("alpha_schedule", "cosine"),
        ("sequence_score", "max"),
        ("weight_clip", [0.5]),
        ("weight_clip", [1.5, 2.0]),
        ("weight_clip", [0.5, 0.9]),
    ],
)
def test_every_key_is_checked_when_built(key, value):
    with pytest.raises(ValueError) as err:
        APOLossSettings(**{key: value})
    message = str(err.value)
    assert f"policy_loss.{key}" in message and "\n" not in message


def test_inactive_schedule_settings_are_checked_too():
    # alpha_ema is read by the guarded schedule only, yet a bad value is refused under `fixed` as well
    with pytest.raises(ValueError, match="policy_loss.alpha_ema"):
        APOLossSettings(alpha_schedule="fixed", alpha_ema=2.0)
    with pytest.raises(ValueError, match="policy_loss.alpha_min .* must be <= policy_loss.alpha_max"):
        APOLossSettings(alpha_schedule="ess", alpha_min=0.8, alpha_max=0.5)
    ok = APOLossSettings(alpha_schedule="guarded", weight_clip=[0.5, 2.0])
    assert ok.weight_clip_tuple() == (0.5, 2.0) and ok.make_schedule().alpha == pytest.approx(0.9)


def test_a_group_objective_by_path_is_checked_in_the_section(tmp_path, monkeypatch):
    from apo.algorithms import get_algorithm

    (tmp_path / "verl_losses.py").write_text(
        "def listwise(logp_BG, old_logp_BG, rewards_BG, *, temperature=1.0):\n    return logp_BG.sum(), {}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    @dataclasses.dataclass
    class Section(APOLossSettings):  # verl's PolicyLossConfig brings loss_mode
        loss_mode: str = "objective"

    s = Section(objective="verl_losses:listwise", objective_kwargs={"temperature": 0.5})
    assert s.group_algorithm("objective") is get_algorithm("verl_losses:listwise")
    assert s.group_algorithm("adpo").name == "adpo"
    with pytest.raises(ValueError, match=r"^policy_loss\.algorithm 'verl_losses:listwise' does not accept .*'temp'"):
        Section(objective="verl_losses:listwise", objective_kwargs={"temp": 0.5})
    with pytest.raises(ValueError, match=r"^policy_loss\.loss_mode=objective needs policy_loss\.objective"):
        Section()
    with pytest.raises(ValueError, match=r"^policy_loss\.objective is read with loss_mode=objective"):
        Section(loss_mode="apo", objective="verl_losses:listwise")
