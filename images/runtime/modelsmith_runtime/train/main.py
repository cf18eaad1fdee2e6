"""`modelsmith-runtime pretrain`: check everything that can be checked cheaply, then train.

Each rank torchrun starts runs `run`. `check` is the cheap half on its own (the task
config, the spec, the dataset and tokenizer artifacts), which every rank runs before it
imports anything heavy; a BadInputError there still reaches the Job as exit 2, since
the launcher (launch.py) collects each rank's own exit code rather than torchrun's.
With `launcher: ray` `run` is started once, on the Ray head, and drives Ray Train's
workers, which run the same check and per-rank training (raytrain.py).
"""

from __future__ import annotations

from pathlib import Path

from modelsmith.api.pretrain import Launcher, PretrainJobSpec
from modelsmith.contract import Result
from modelsmith_runtime.task import load_task
from modelsmith_runtime.train.plan import Plan, make_plan


def check(task_config: Path) -> Plan:
    return make_plan(load_task(task_config, PretrainJobSpec))


def run(task_config: Path) -> Result:
    plan = check(task_config)
    if plan.spec.distribution.launcher == Launcher.RAY:
        from modelsmith_runtime.train import raytrain

        return raytrain.run(task_config, plan)
    from modelsmith_runtime.train.session import train  # torch and transformers: seconds

    return train(plan)
