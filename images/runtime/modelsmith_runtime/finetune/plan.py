"""What a FineTune run will do, decided and checked before torch is imported.

Everything here is cheap: the spec (CEL rules again, since a task config can come from
outside the API server), the base model artifact (and a distillation's teacher,
whose vocabulary must be the student's), and every line of the dataset. Bad
input therefore fails with exit code 2 in about a second, not after loading a model.

QLoRA runs wherever bitsandbytes does: on CUDA, and since bitsandbytes 0.46 on the CPU
too (slowly; that is how the tests run it). A spec that asks for a GPU whose pod finds
no usable CUDA device met a broken node (driver, device plugin): a retry on another
node may pass, so that is a TransientError, raised by `model.require_qlora_runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsmith.api.finetune import LORA_METHODS, FineTuneSpec, LoRA, Method
from modelsmith.contract import Producer
from modelsmith_runtime import hfmodel, storage
from modelsmith_runtime.finetune.distill import check_vocab
from modelsmith_runtime.finetune.records import Example, read_examples
from modelsmith_runtime.task import Task

PLAIN = (Method.FULL, Method.DISTILL)
"""The methods that train the model's own weights and publish a plain model."""


@dataclass(frozen=True)
class Teacher:
    uri: str
    dir: Path
    digest: str | None
    vocab: int
    """The vocabulary both models share: the distributions are compared on these ids."""


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
    teacher: Teacher | None = None
    """method distill: the teacher, its vocabulary checked against the student's."""

    @property
    def merged(self) -> bool:
        """Whether the output is a plain model (every weight trained, or a merged adapter)."""
        return self.spec.method in PLAIN or self.spec.merge_adapter

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
    lora = (spec.lora or LoRA()) if spec.method in LORA_METHODS else None
    teacher = None
    if spec.distill is not None:
        teacher_uri = task.input("teacher")
        teacher_dir = hfmodel.open_model(teacher_uri, "distill.teacher")
        vocab = check_vocab(base_dir, teacher_dir)
        teacher = Teacher(teacher_uri, teacher_dir, storage.artifact_digest(teacher_dir), vocab)
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
        teacher=teacher,
    )
