"""train.max_steps 0 ("auto") with train.max_minutes: the number of steps set from a measured step time.

A schedule that decays to its end at train.max_steps (cosine) must end when the time budget does, on a machine of
any speed: a fixed max_steps either stops early (time up, the learning rate still high) or ends long before the
budget. So the run times steps WARM + 1 .. WARM + TIMED (the first WARM warm caches and kernels up), and at that step
sets max_steps = that step + MARGIN x (the budget left) / (the time a step took). The steps are set, not the
schedule made a function of wall time, so that the learning rate of every step is a function of the step alone:
the plan is logged, written into the run's config.yaml and its checkpoints, and a resume keeps it (a resume from a
checkpoint written before the plan measures again). The estimate does not see evaluations and checkpoints: with
many of them the run stops by time a little before the schedule's end. The cosine schedule needs optim.warmup >=
AUTO_STEPS_MIN_WARMUP (aiayn.config.RunConfig checks), so that no learning rate before the plan depends on
max_steps.
"""

from __future__ import annotations

from aiayn.config import RunConfig, TrainConfig
from aiayn.train import distributed

__all__ = ["StepPlan"]

WARM, TIMED = 10, 40
# A resume before the plan plans again, TIMED steps after it starts: at step 2 * TIMED + WARM - 1 = 89 at the latest,
# inside the AUTO_STEPS_MIN_WARMUP (100) warmup steps that RunConfig asks of a cosine schedule here.
MARGIN = 0.97


class StepPlan:
    """Times steps and returns the planned max_steps once (`after_step`); inactive when max_steps was given."""

    def __init__(self, train: TrainConfig) -> None:
        self.budget = train.max_minutes * 60
        self.active = train.max_steps == 0
        self.start: tuple[int, float] | None = None  # (step, run clock) where the timing began

    def after_step(self, step: int, seconds: float, dist: distributed.Dist, config: RunConfig, log, folder) -> bool:
        """After each step (`seconds`: the run's clock): when this one ends the timing, set config.train.max_steps,
        say so, write the run's config.yaml (rank 0) and return True. Every process plans alike (the mean of their
        step times)."""
        if not self.active:
            return False
        if self.start is None:
            if step >= WARM:
                self.start = (step, seconds)
            return False
        if step - self.start[0] < TIMED:
            return False
        per_step = (seconds - self.start[1]) / (step - self.start[0])
        if dist.active:
            per_step = distributed.all_sum([per_step], dist)[0] / dist.world_size
        self.active = False
        left = max(self.budget - seconds, 0.0)
        config.train.max_steps = step + max(int(MARGIN * left / max(per_step, 1e-9)), 1)
        log(f"train.max_steps: {config.train.max_steps:,} (steps {self.start[0] + 1}-{step} took {per_step:.3f} s "
            f"each; {left / 60:.1f} of train.max_minutes {self.budget / 60:g} left)")  # fmt: skip
        if dist.is_main:
            folder.write_config(config.to_dict())
        return True
