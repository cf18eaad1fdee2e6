"""What a FineTune run will do, decided and checked before torch is imported.

Everything here is cheap: the spec (CEL rules again, since a task config can come from
outside the API server), the base model artifact, and every line of the dataset. Bad
input therefore fails with exit code 2 in about a second, not after loading a model.

QLoRA runs wherever bitsandbytes does: on CUDA, and since bitsandbytes 0.46 on the CPU
too (slowly; that is how the tests run it). A spec that asks for a GPU whose pod finds
no usable CUDA device met a broken node (driver, device plugin): a retry on another
node may pass, so that is a TransientError, raised by `model.require_qlora_runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsmith.api.finetune import FineTuneSpec, LoRA, Method
from modelsmith.contract import Producer
from modelsmith_runtime import hfmodel, storage
from modelsmith_runtime.finetune.records import Example, read_examples
from modelsmith_runtime.task import Task


@dataclass(frozen=True)
class Plan:
    spec: FineTuneSpec
    base_uri: str
    base_dir: Path
    base_digest: str | None
    dataset_uri: str
    output: str
    producer: Producer
    examples: list[Example]
    lora: LoRA | None
    """Adapter settings for lora and qlora (the defaults when the spec has none)."""

    @property
    def merged(self) -> bool:
        """Whether the output is a plain model (full fine-tuning, or a merged adapter)."""
        return self.spec.method == Method.FULL or self.spec.merge_adapter

    @property
    def accumulation(self) -> int:
        h = self.spec.hyperparameters
        return h.batch_size // h.micro_batch_size


def make_plan(task: Task[FineTuneSpec]) -> Plan:
    spec = task.spec
    base_uri = task.input("baseModel")
    base_dir = hfmodel.open_model(base_uri, "baseModel")
    dataset_uri = task.input("dataset")
    examples = read_examples(dataset_uri, spec.format)
    lora = None if spec.method == Method.FULL else (spec.lora or LoRA())
    return Plan(
        spec=spec,
        base_uri=base_uri,
        base_dir=base_dir,
        base_digest=storage.artifact_digest(base_dir),
        dataset_uri=dataset_uri,
        output=task.config.output,
        producer=task.producer,
        examples=examples,
        lora=lora,
    )
