"""train.max_steps 0 ("auto") with train.max_minutes: the number of steps set from a measured step time.

A schedule that decays to its end at train.max_steps (cosine) must end when the time budget does, on a machine of
any speed: a fixed max_steps either stops early (time up, the learning rate still high) or ends long before the
budget. So the run times steps WARM + 1 .. WARM + TIMED (the first WARM warm caches and kernels up), and at that step
sets max_steps = that step + MARGIN x (the budget left) / (the time a step took). Forty steps are a noisy sample
(on a shared 2-core machine one 15-minute run measured 0.45 s a step there and averaged 0.54 s, so it stopped by
time at 86 % of its schedule, the learning rate still 6x its floor), so the plan is made again at REPLAN fractions
of the planned steps from the mean step time since the timing began, and changed when it moves by more than
REPLAN_TOLERANCE. The steps are set, not the schedule made a function of wall time, so that the learning rate of
every step is a function of the step and the plan: each plan is logged, written into the run's config.yaml and its
checkpoints, and a resume keeps the last one (a resume from a checkpoint written before the first plan measures
again). Evaluations and checkpoints count in the mean only once they have happened. The cosine schedule needs
optim.warmup >= AUTO_STEPS_MIN_WARMUP (aiayn.config.RunConfig checks), so that no learning rate before the first
plan depends on max_steps.
"""

from __future__ import annotations

from aiayn.config import RunConfig, TrainConfig
from aiayn.train import distributed

__all__ = ["StepPlan"]

WARM, TIMED = 10, 40
# A resume before the plan plans again, TIMED steps after it starts: at step 2 * TIMED + WARM - 1 = 89 at the latest,
# inside the AUTO_STEPS_MIN_WARMUP (100) warmup steps that RunConfig asks of a cosine schedule here.
MARGIN = 0.97
REPLAN = (0.25, 0.5, 0.75, 0.9)  # of the planned steps: plan again there (every process at the same step)
REPLAN_TOLERANCE = 0.01


class StepPlan:
    """Times steps and sets config.train.max_steps (`after_step`); inactive when max_steps was given."""

    def __init__(self, train: TrainConfig) -> None:
        self.budget = train.max_minutes * 60
        self.active = train.max_steps == 0
        self.start: tuple[int, float] | None = None  # (step, run clock) where the timing began
        self.replan_at: list[int] | None = None  # None: not planned yet; then the steps at which to plan again

    def after_step(self, step: int, seconds: float, dist: distributed.Dist, config: RunConfig, log, folder) -> bool:
        """After each step (`seconds`: the run's clock): when this one ends the timing or is a REPLAN point, set
        config.train.max_steps from the mean step time since the timing began, say so, write the run's config.yaml
        (rank 0) and return True (False when nothing changed). Every process plans alike at the same step (the
        mean of their step times; the REPLAN points are fractions of the plan they share)."""
        if not self.active:
            return False
        if self.start is None:
            if step >= WARM:
                self.start = (step, seconds)
            return False
        if self.replan_at is None:
            due = step - self.start[0] >= TIMED
        else:
            due = bool(self.replan_at) and step >= self.replan_at[0]
        if not due:
            return False
        per_step = (seconds - self.start[1]) / (step - self.start[0])
        if dist.active:
            per_step = distributed.all_sum([per_step], dist)[0] / dist.world_size
        left = max(self.budget - seconds, 0.0)
        steps = step + max(int(MARGIN * left / max(per_step, 1e-9)), 1)
        first, old = self.replan_at is None, config.train.max_steps
        if not first and abs(steps - old) <= REPLAN_TOLERANCE * old:  # the plan holds: keep it and its points
            self.replan_at = [at for at in self.replan_at if at > step]
            return False
        config.train.max_steps = steps
        self.replan_at = [at for at in (int(f * steps) for f in REPLAN) if at > step]
        again = "" if first else f"planned again at step {step}: "
        log(f"train.max_steps: {steps:,} ({again}steps {self.start[0] + 1}-{step} took {per_step:.3f} s "
            f"each; {left / 60:.1f} of train.max_minutes {self.budget / 60:g} left)")  # fmt: skip
        if dist.is_main:
            folder.write_config(config.to_dict())
        return True
