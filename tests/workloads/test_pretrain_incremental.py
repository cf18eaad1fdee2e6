"""Continued pretraining as real `modelsmith-runtime pretrain` processes: spec.initFrom
starts from a published model's weights, spec.freeze keeps some of them bit-identical,
and an initFrom whose architecture differs from the spec is refused before training.

The base is a real PretrainJob run on the same tiny corpus; the continued runs start
where it ended, which a random init cannot (its first loss is about ln(vocabulary)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset, train_records

FROZEN_LAYERS = 1


@dataclass(frozen=True)
class Runs:
    vocab: int
    base: Run
    continued: Run
    resumed: Run
    """The continued run's config with more steps, rerun where it left its checkpoints."""


def _continued(dataset: str, base: str, output: str, **spec: Any) -> dict[str, Any]:
    config = pretrain_config(
        dataset,
        output,
        training={"steps": 10, "warmupRatio": 0.0, "learningRate": 1e-3},
        checkpoint={"intervalSteps": 5, "keepLast": 2},
        initFrom={"uri": base},
        **spec,
    )
    config["inputs"]["initFrom"] = base
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("incremental")
    dataset = str(root / "dataset")
    vocab = int(str(publish_dataset(dataset)["vocabSize"]))
    base = run_component(
        "pretrain",
        pretrain_config(dataset, str(root / "base" / "model"), training={"steps": 30}),
        root / "base",
    )
    assert base.returncode == 0 and base.result is not None, base.output
    base_uri = base.result.uri or ""
    freeze = {"layers": FROZEN_LAYERS}
    output = str(root / "continued" / "model")
    config = _continued(dataset, base_uri, output, freeze=freeze)
    continued = run_component("pretrain", config, root / "continued")
    config["spec"]["training"]["steps"] = 15
    resumed = run_component("pretrain", config, root / "resumed")
    return Runs(vocab, base, continued, resumed)


def _weights(run: Run) -> dict[str, Any]:
    from safetensors.torch import load_file

    assert run.result is not None and run.result.uri, run.output
    return load_file(str(Path(run.result.uri) / "model.safetensors"))


def _frozen(name: str) -> bool:
    lower = ("model.embed_tokens.", *(f"model.layers.{i}." for i in range(FROZEN_LAYERS)))
    return name.startswith(lower)


def test_continued_run_starts_from_the_base_models_loss(runs: Runs) -> None:
    assert runs.continued.returncode == 0, runs.continued.output
    assert runs.base.result is not None and runs.continued.result is not None
    base_final = runs.base.result.metrics["loss"]
    first = train_records(runs.continued.output)[0]["loss"]
    random_init = math.log(runs.vocab)
    assert base_final < random_init - 2.0
    # The first step's loss is the base's end of training, not a fresh model's ln(V).
    assert first < random_init - 2.0
    assert first == pytest.approx(base_final, abs=0.5)


def test_frozen_layers_are_bit_identical_and_the_rest_trained(runs: Runs) -> None:
    import torch

    base, after = _weights(runs.base), _weights(runs.continued)
    assert base.keys() == after.keys()
    frozen = [n for n in base if _frozen(n)]
    trained = [n for n in base if not _frozen(n)]
    assert len(frozen) == 1 + 9 and trained  # embeddings + layer 0's nine tensors
    for name in frozen:
        assert torch.equal(base[name], after[name]), f"{name} changed though frozen"
    for name in trained:
        assert not torch.equal(base[name], after[name]), f"{name} did not train"
    assert runs.continued.result is not None
    share = runs.continued.result.metrics["trainable_share"]
    total = sum(t.numel() for t in base.values())
    assert share == pytest.approx(sum(base[n].numel() for n in trained) / total)


def test_a_resumed_frozen_run_continues_from_its_checkpoint(runs: Runs) -> None:
    import torch

    assert runs.resumed.returncode == 0, runs.resumed.output
    assert "resuming from step 10 of 15" in runs.resumed.output
    assert runs.resumed.result is not None
    assert runs.resumed.result.metrics["resumed_from_step"] == 10
    assert runs.resumed.result.metrics["steps"] == 15
    base, after = _weights(runs.base), _weights(runs.resumed)
    for name in base:
        assert torch.equal(base[name], after[name]) == _frozen(name), name


def test_an_architecture_that_differs_from_init_from_is_refused(runs: Runs, tmp_path: Path) -> None:
    assert runs.base.result is not None
    base = runs.base.result.uri or ""
    dataset = str(Path(base).parent.parent / "dataset")
    config = _continued(
        dataset, base, str(tmp_path / "model"), architecture={"layers": 3, "hiddenSize": 128}
    )
    run = run_component("pretrain", config, tmp_path)
    assert run.returncode == 2, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "ArchitectureMismatch"
    message = run.result.error.message
    assert "initFrom does not match spec.architecture" in message
    assert "architecture.layers is 3, the model's num_hidden_layers is 2" in message
    assert "architecture.hiddenSize is 128, the model's hidden_size is 64" in message
    assert "architecture.heads" not in message  # only what differs
    assert not Path(tmp_path / "model").exists()
