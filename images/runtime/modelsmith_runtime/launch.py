"""Start torchrun inside the pod, and fold its ranks back into one contract result.

The operator gives every worker pod NNODES, NPROC_PER_NODE, MASTER_ADDR/PORT and its
index. Running torchrun ourselves (rather than as the image's entrypoint) keeps the
contract whole: torchrun reports any failed rank as exit 1, and every rank would write
the same termination log. Here each rank writes its own result and intended exit code
into a scratch folder, and the launcher decides: bad input anywhere is exit 2 (no
retry), the first failure's result wins over the follow-on failures of the other
ranks, and on success rank 0 speaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from modelsmith.contract import ErrorInfo, ExitCode, Result, parse_result

RANK_DIR_ENV = "MODELSMITH_RANK_RESULTS"
DISTRIBUTED = frozenset({"pretrain"})
"""Components that run as torch.distributed ranks; the others are one process per pod
(fine-tuning today uses one process, and its GPUs through device placement)."""


def world(env: dict[str, str]) -> tuple[int, int]:
    """(nodes, processes per node) the operator asked for; (1, 1) outside a pod."""
    return int(env.get("NNODES", "1") or 1), int(env.get("NPROC_PER_NODE", "1") or 1)


def should_launch(env: dict[str, str]) -> bool:
    """Launch torchrun unless we are already one of its ranks or there is one rank."""
    nodes, per_node = world(env)
    return "RANK" not in env and RANK_DIR_ENV not in env and nodes * per_node > 1


def rank_files(env: dict[str, str]) -> tuple[Path, Path] | None:
    """Where this rank writes its result and exit code, when run by the launcher."""
    folder = env.get(RANK_DIR_ENV)
    if not folder:
        return None
    rank = env.get("RANK", "0")
    return Path(folder) / f"rank-{rank}.json", Path(folder) / f"rank-{rank}.exit"


def launch(component: str, task_config: Path) -> tuple[int, Result]:
    env = dict(os.environ)
    nodes, per_node = world(env)
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        env[RANK_DIR_ENV] = folder
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={nodes}",
            f"--nproc-per-node={per_node}",
            f"--node-rank={env.get('MODELSMITH_WORKER_INDEX', '0') or 0}",
            f"--master-addr={env.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master-port={env.get('MASTER_PORT', '29500')}",
            "-m",
            "modelsmith_runtime.cli",
            component,
            f"--task-config={task_config}",
        ]
        returncode = subprocess.run(argv, env=env, check=False).returncode
        return fold(Path(folder), returncode)


def fold(folder: Path, torchrun_code: int) -> tuple[int, Result]:
    """One exit code and result from every rank's: see the module docstring."""
    ranks = []
    for exit_file in folder.glob("rank-*.exit"):
        result_file = exit_file.with_suffix(".json")
        text = result_file.read_text() if result_file.exists() else None
        ranks.append(
            (exit_file.stat().st_mtime, int(exit_file.read_text() or 1), parse_result(text))
        )
    ranks.sort(key=lambda item: item[0])
    failures = [(code, result) for _when, code, result in ranks if code != ExitCode.OK]
    if failures:
        code = ExitCode.BAD_INPUT if any(c == ExitCode.BAD_INPUT for c, _ in failures) else 1
        first = next((r for c, r in failures if c == code and r is not None), None)
        return int(code), first or Result(error=ErrorInfo(reason="RankFailed", message="?"))
    rank0 = parse_result(
        (folder / "rank-0.json").read_text() if (folder / "rank-0.json").exists() else None
    )
    if torchrun_code != 0 or rank0 is None:
        message = f"torchrun exited {torchrun_code} and no rank reported a result"
        return int(ExitCode.TRANSIENT), Result(
            error=ErrorInfo(reason="LauncherFailed", message=message)
        )
    return int(ExitCode.OK), rank0
