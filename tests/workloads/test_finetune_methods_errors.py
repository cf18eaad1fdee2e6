"""How prefix, adapter, distill and freeze settings fail: exit code 2, the field named,
and nothing published. The spec rules fail before torch is imported; what needs the
model (its layer count, its module names) fails once it is loaded, before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import ExitCode
from tests.workloads.conftest import run_component
from tests.workloads.tiny_model import finetune_config, instruction_records, tiny_model, write_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory)


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return str(write_jsonl(tmp_path / "train.jsonl", instruction_records(16)))


def _refused(config: dict[str, Any], workdir: Path) -> str:
    run = run_component("finetune", config, workdir)
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == "InvalidSpec", run.result.error
    assert not Path(config["output"]).exists()
    return run.result.error.message


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"method": "prefix", "mergeAdapter": True}, "mergeAdapter needs method lora or qlora"),
        ({"method": "distill"}, "method distill needs distill.teacher"),
        ({"method": "lora", "freeze": {"layers": 1}}, "freeze needs method full or distill"),
        ({"method": "full", "adapter": {}}, "adapter settings need method adapter"),
    ],
)
def test_rules_the_crd_states_are_checked_again(
    base: str, dataset: str, tmp_path: Path, spec: dict[str, Any], words: str
) -> None:
    config = finetune_config(base, dataset, str(tmp_path / "out"), **spec)
    assert words in _refused(config, tmp_path)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            {"method": "full", "freeze": {"layers": 3}},
            "freeze.layers: 3, but the model has 2 decoder layers",
        ),
        (
            {"method": "full", "freeze": {"modules": ["q_proj", "attention"]}},
            "freeze.modules: 'attention' matches no module of the model",
        ),
        (
            {"method": "full", "freeze": {"layers": 2, "modules": ["lm_head", "norm"]}},
            "freeze freezes every parameter: nothing would train",
        ),
        (
            {"method": "adapter", "adapter": {"targetModules": ["mlp", "ffn"]}},
            "adapter.targetModules: the decoder layers have no sublayer 'ffn'",
        ),
    ],
)
def test_settings_the_model_cannot_meet(
    base: str, dataset: str, tmp_path: Path, spec: dict[str, Any], words: str
) -> None:
    config = finetune_config(base, dataset, str(tmp_path / "out"), **spec)
    assert words in _refused(config, tmp_path)
