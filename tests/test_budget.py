"""train.max_steps 0 (aiayn.train.budget): the steps set from a measured step time so that the schedule ends when
train.max_minutes does, on a machine of any speed; recorded in config.yaml, so a resume keeps the plan."""

import re

import pytest
import yaml
from tiny_run import TINY, aiayn

from aiayn.config import RunConfig
from aiayn.errors import ConfigError
from aiayn.train import distributed
from aiayn.train.budget import StepPlan


class Folder:
    def __init__(self):
        self.written = []

    def write_config(self, config):
        self.written.append(config["train"]["max_steps"])


def _config(**train):
    return RunConfig.from_dict({"optim": {"schedule": "inverse_sqrt", "warmup": 4}, "train": train})


def test_the_plan_fills_the_budget_left_at_the_measured_step_time():
    config, folder, lines = _config(max_steps=0, max_minutes=1.0), Folder(), []
    plan = StepPlan(config.train)
    planned = [plan.after_step(s, 0.5 * s, distributed.Dist(), config, lines.append, folder) for s in range(1, 80)]
    assert planned.index(True) == 49 and planned.count(True) == 1  # after step 50: steps 11-50 were timed
    assert config.train.max_steps == 50 + int(0.97 * (60 - 25) / 0.5) == 117  # 35 s left at 0.5 s a step
    assert folder.written == [117] and lines == [
        "train.max_steps: 117 (steps 11-50 took 0.500 s each; 0.6 of train.max_minutes 1 left)"]  # fmt: skip
    given = _config(max_steps=30, max_minutes=1.0)
    assert not any(StepPlan(given.train).after_step(s, s, distributed.Dist(), given, print, folder) for s in range(60))


@pytest.mark.parametrize(("sections", "message"), [
    ({"train": {"max_steps": 0}}, "train.max_steps=0 sets the steps from train.max_minutes: give"),
    ({"train": {"max_steps": 0, "max_minutes": 5}, "optim": {"schedule": "cosine", "warmup": 50}},
     "needs optim.warmup >= 100 (it is 50)"),
    ({"train": {"max_steps": -1}}, "TrainConfig.max_steps=-1 must be >= 0"),
])  # fmt: skip
def test_settings_it_cannot_plan_with_are_one_line(sections, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict(sections)


def test_a_run_plans_its_steps_records_them_and_a_resume_keeps_them(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--train.max_steps", "0", "--train.max_minutes", "0.25", "--train.eval_every", "100000",
            "--train.save_every", "20", "--train.log_every", "20", "--train.out_dir", out]  # fmt: skip
    first = aiayn("train", *args, env={"AIAYN_FAULT": "after_step:60"})  # killed after the plan (step 50)
    assert first.returncode != 0
    planned = int(re.search(r"train\.max_steps: ([\d,]+) \(steps 11-50 took", first.stdout).group(1).replace(",", ""))
    assert planned > 60
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == planned
    resumed = aiayn("train", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "train.max_steps:" not in resumed.stdout  # kept from the checkpoint, not measured again
    assert yaml.safe_load((out / "last" / "config.yaml").read_text())["train"]["max_steps"] == planned


def test_the_plan_is_made_again_when_steps_turn_slower():
    """Steps 11-50 at 0.5 s, then 1 s each: the first plan (117 steps for a minute) would run out of time at step
    ~85; planning again at a quarter, half, ... of the plan, from the mean step time so far, ends the schedule
    inside the budget."""
    config, folder, lines = _config(max_steps=0, max_minutes=1.0), Folder(), []
    plan, clock = StepPlan(config.train), 0.0
    changed = []
    for step in range(1, 200):
        clock += 0.5 if step <= 50 else 1.0
        if plan.after_step(step, clock, distributed.Dist(), config, lines.append, folder):
            changed.append((step, config.train.max_steps))
        if 0 < config.train.max_steps <= step:
            break
    # at 50: 35 s left at 0.5 s -> 117; at 58 (half of 117, 0.25 x 117 = 29 was before the plan): mean
    # (33 - 5) / 48 = 0.583 s, 27 s left -> 58 + int(0.97 * 27 / 0.583) = 102; at 76 (0.75 x 102): mean 46 / 66,
    # 9 s left -> 88; at 79 (0.9 x 88): mean 49 / 69, 6 s left -> 87
    assert changed == [(50, 117), (58, 102), (76, 88), (79, 87)]
    assert folder.written == [117, 102, 88, 87]
    assert lines[1] == ("train.max_steps: 102 (planned again at step 58: steps 11-58 took 0.583 s each; "
                        "0.5 of train.max_minutes 1 left)")  # fmt: skip
    # the schedule ends at step 87 (62 s); train.max_minutes stops the run at step 85, 98 % of the way, where the
    # first plan alone would have stopped at 85 of 117 steps (73 %)
    assert step == 87 and clock == 62.0
