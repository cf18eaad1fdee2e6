"""`modelsmith-runtime finetune` with method distill, against the same student trained
without its teacher (method full, the same data, steps, learning rate and seed).

The teacher is a larger model (3 layers, width 96, more pretraining) with the
student's tokenizer: the tiny models' tokenizer is a function of the seed's text
alone, so the same seed gives the same vocabulary.

The measure is what distillation optimises, on text neither run trained on: the mean
per-token KL(teacher || student) of the next-token distributions over the response
tokens of held-out questions (exact over the vocabulary, so no sampling noise). A
student trained on the hard labels alone gets closer to the teacher too (both learn
the task); the distilled one must get closer still.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from modelsmith.contract import COMPLETION_MARKER, ExitCode
from modelsmith_runtime import storage
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_model import (
    HYPER,
    Size,
    finetune_config,
    publish_model,
    qa_pairs,
    tiny_model,
    write_jsonl,
)

TEACHER = Size(hidden=96, intermediate=288, layers=3, steps=150)
SETTINGS = {"alpha": 0.9, "temperature": 2.0}
HP = {**HYPER, "learningRate": 1e-3}


def _completions(count: int, seed: int) -> list[dict[str, str]]:
    return [{"prompt": q, "completion": f" {a}"} for q, a in qa_pairs(count, seed)]


def distill_config(base: str, data: str, output: str, teacher: str, **spec: Any) -> dict[str, Any]:
    config = finetune_config(
        base,
        data,
        output,
        method="distill",
        distill={"teacher": {"uri": teacher}, **SETTINGS},
        hyperparameters=HP,
        **spec,
    )
    config["inputs"]["teacher"] = teacher
    return config


@dataclass(frozen=True)
class Runs:
    base: str
    teacher: str
    root: Path
    distilled: Run
    plain: Run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("distill")
    teacher = publish_model(str(root / "teacher"), size=TEACHER)
    data = str(write_jsonl(root / "train.jsonl", _completions(64, 7)))
    distill = distill_config(base, data, str(root / "distilled"), teacher)
    plain = finetune_config(base, data, str(root / "plain"), method="full", hyperparameters=HP)
    with ThreadPoolExecutor(max_workers=2) as pool:
        distilled = pool.submit(run_component, "finetune", distill, root / "work-distilled")
        alone = pool.submit(run_component, "finetune", plain, root / "work-plain")
        return Runs(base, teacher, root, distilled.result(), alone.result())


def _metrics(run: Run) -> dict[str, float]:
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None, run.output
    assert run.result.uri is not None
    return run.result.metrics


def _load(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _kl_to_teacher(student: Any, teacher: Any, tokenizer: Any) -> float:
    total, count = 0.0, 0
    for question, answer in qa_pairs(64, 99):  # neither run's data (seed 7)
        prompt = tokenizer(question)["input_ids"]
        response = tokenizer(f" {answer}{tokenizer.eos_token}", add_special_tokens=False)
        ids = torch.tensor([prompt + response["input_ids"]])
        at = slice(len(prompt) - 1, -1)  # the positions that predict the response
        with torch.inference_mode():
            t = torch.log_softmax(teacher(input_ids=ids).logits[0, at].float(), dim=-1)
            s = torch.log_softmax(student(input_ids=ids).logits[0, at].float(), dim=-1)
        total += float((t.exp() * (t - s)).sum())
        count += t.shape[0]
    return total / count


def test_the_distilled_student_is_closer_to_its_teacher_than_one_trained_alone(
    runs: Runs,
) -> None:
    from transformers import AutoTokenizer

    distilled, plain = _metrics(runs.distilled), _metrics(runs.plain)
    assert distilled["steps"] == plain["steps"]
    tokenizer = AutoTokenizer.from_pretrained(runs.base)
    teacher = _load(runs.teacher)
    untrained = _kl_to_teacher(_load(runs.base), teacher, tokenizer)
    alone = _kl_to_teacher(_load(runs.root / "plain"), teacher, tokenizer)
    taught = _kl_to_teacher(_load(runs.root / "distilled"), teacher, tokenizer)
    assert alone < untrained, (untrained, alone)
    assert taught < 0.9 * alone, (untrained, alone, taught)


def test_distill_reports_the_gap_to_its_teacher_and_publishes_a_plain_model(
    runs: Runs,
) -> None:
    metrics = _metrics(runs.distilled)
    assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics
    assert metrics["teacher_eval_loss"] < metrics["eval_loss_before"], "a better teacher"
    assert metrics["distill_gap"] == pytest.approx(
        metrics["eval_loss"] - metrics["teacher_eval_loss"]
    )
    assert metrics["trainable_share"] == 1.0
    out = runs.root / "distilled"
    marker = json.loads((out / COMPLETION_MARKER).read_text())
    assert marker["method"] == "distill" and marker["merged"] is True
    assert marker["teacher"] == {"uri": runs.teacher, "digest": artifact_digest(Path(runs.teacher))}
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    _load(out)  # what QuantizeJob and InferenceService read


def test_a_teacher_with_another_vocabulary_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("distill-vocab")
    with storage.publish(str(root / "teacher"), {"kind": "PretrainJob"}) as (staging, _):
        for item in Path(base).iterdir():
            if item.name != COMPLETION_MARKER:
                shutil.copy(item, staging / item.name)
        tokenizer = json.loads((staging / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        first, second = sorted(vocab, key=vocab.get)[300:302]  # two merged tokens trade ids
        vocab[first], vocab[second] = vocab[second], vocab[first]
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer))
    data = str(write_jsonl(root / "train.jsonl", _completions(8, 7)))
    config = distill_config(base, data, str(root / "out"), str(root / "teacher"))
    run = run_component("finetune", config, root / "work")
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "IncompatibleTeacher"
    assert "distill.teacher uses another tokenizer than baseModel" in run.result.error.message
    assert repr(first) in run.result.error.message or repr(second) in run.result.error.message
    assert not (root / "out").exists()
