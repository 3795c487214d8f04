"""Where a training step's time goes: N steps of a config under torch.profiler, validation off.

Prints the throughput of the profiled steps (logged every 10) and the operators by self CPU time. Extra
arguments are config overrides, as for `aiayn train`.

    python benchmarks/profile_train.py configs/multi30k-tiny.yaml 30
    python benchmarks/profile_train.py configs/multi30k-tiny.yaml 30 --tokenizer.vocab_size 4000
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from aiayn.config import RunConfig, load_yaml, merge, parse_overrides
from aiayn.train.trainer import Trainer


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    config_path, steps, *overrides = sys.argv[1:]
    config = RunConfig.from_dict(merge(load_yaml(config_path), parse_overrides(overrides)))
    config.train.max_steps = int(steps)
    config.train.eval_every = config.train.save_every = 10**9
    config.train.log_every = 10
    config.data.valid_src = config.data.valid_tgt = config.data.valid_tsv = config.data.valid_text = ""
    config.data.valid_fraction = 0.0
    with tempfile.TemporaryDirectory() as out:
        config.train.out_dir = out
        trainer = Trainer(config)
        loop = trainer._loop

        def profiled() -> int:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                code = loop()
                print(f"{steps} steps in {time.perf_counter() - start:.1f} s (profiler on)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            return code

        trainer._loop = profiled
        trainer.run()


if __name__ == "__main__":
    main()
