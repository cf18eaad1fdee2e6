"""`modelsmith-runtime <component> --task-config=…`: the images' one entrypoint.

`modelsmith-runtime fetch --uri=URI --dest=DIR` is the InferenceService's init
container: it verifies a published artifact and downloads it into the served pod's
emptyDir, so a missing or corrupt model shows as Init:Error and is never served.

Whatever happens, the process ends by writing a contract `Result` to the termination
log and exiting with the contract's exit code, so the operator can tell bad input
(fail now) from a transient failure (retry from the checkpoint).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from modelsmith.contract import TASK_CONFIG_PATH, TERMINATION_LOG, ErrorInfo, ExitCode, Result
from modelsmith_runtime import launch, raycluster, storage
from modelsmith_runtime.errors import BadInputError, TransientError

log = logging.getLogger("modelsmith_runtime")

COMPONENTS = {
    "data": "modelsmith_runtime.data.main",
    "pretrain": "modelsmith_runtime.train.main",
    "finetune": "modelsmith_runtime.finetune.main",
    "quantize": "modelsmith_runtime.quantize.main",
    "serve": "modelsmith_runtime.serve.main",
}
"""Component -> module with `run(task_config: Path) -> Result`."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log collectors parse what the workload says."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if os.environ.get("RANK"):
            entry["rank"] = os.environ["RANK"]
        return json.dumps(entry)


def _termination_log() -> Path:
    return Path(os.environ.get("MODELSMITH_TERMINATION_LOG", TERMINATION_LOG))


def write_result(result: Result, code: int = 0) -> None:
    ranked = launch.rank_files(dict(os.environ))
    if ranked is not None:  # one rank of our own torchrun: the launcher decides
        ranked[0].write_text(result.render())
        ranked[1].write_text(str(code))
        return
    path = _termination_log()
    try:
        path.write_text(result.render())
    except OSError as exc:  # outside a pod /dev/termination-log may not be writable
        log.warning("could not write termination message to %s: %s", path, exc)


def _component(name: str) -> Callable[[Path], Result]:
    module = importlib.import_module(COMPONENTS[name])
    run: Callable[[Path], Result] = module.run
    return run


def _fetch(uri: str, dest: Path) -> Result:
    if not dest.is_dir():
        raise BadInputError("InvalidArguments", f"--dest {dest} is not a directory")
    return storage.fetch(uri, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelsmith-runtime")
    parser.add_argument("component", choices=[*sorted(COMPONENTS), "fetch"])
    parser.add_argument("--task-config", type=Path, default=Path(TASK_CONFIG_PATH))
    parser.add_argument("--uri", help="fetch: the published artifact")
    parser.add_argument("--dest", type=Path, help="fetch: an existing directory to fill")
    args = parser.parse_args(argv)
    if args.component == "fetch" and (not args.uri or args.dest is None):
        parser.error("fetch needs --uri and --dest")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=os.environ.get("MODELSMITH_LOG_LEVEL", "INFO"), handlers=[handler])
    if args.component == "fetch":
        return _run(lambda: _fetch(args.uri, args.dest))
    if raycluster.is_worker_pod(os.environ):
        return raycluster.serve_worker(os.environ)
    if args.component in launch.DISTRIBUTED and launch.should_launch(dict(os.environ)):
        code, result = launch.launch(args.component, args.task_config)
        write_result(result)
        return code
    return _run(lambda: _component(args.component)(args.task_config))


def _run(work: Callable[[], Result]) -> int:
    """Run, write the Result and say by the exit code what a failure means."""
    try:
        result = work()
    except BadInputError as exc:
        log.error("bad input (%s): %s", exc.reason, exc.message)
        write_result(
            Result(error=ErrorInfo(reason=exc.reason, message=exc.message)), ExitCode.BAD_INPUT
        )
        return int(ExitCode.BAD_INPUT)
    except TransientError as exc:
        log.error("failed (%s), a retry may pass: %s", exc.reason, traceback.format_exc())
        error = ErrorInfo(reason=exc.reason, message=exc.message)
        write_result(
            (exc.partial or Result()).model_copy(update={"error": error}), ExitCode.TRANSIENT
        )
        return int(ExitCode.TRANSIENT)
    except Exception as exc:
        log.error("failed: %s", traceback.format_exc())
        error = ErrorInfo(reason=type(exc).__name__, message=str(exc) or repr(exc))
        write_result(Result(error=error), ExitCode.TRANSIENT)
        return int(ExitCode.TRANSIENT)
    write_result(result)
    log.info("done: %s", result.render())
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
