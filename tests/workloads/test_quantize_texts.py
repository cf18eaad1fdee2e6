"""What the quality gate scores, and which layers a method can quantize, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelsmith.api.quantize import QuantizeJobSpec
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.quantize import methods
from modelsmith_runtime.quantize.texts import DEFAULT_EVAL_TEXT, eval_texts, read_texts
from tests.workloads.tiny_model import tiny_model, write_jsonl


def test_every_record_shape_gives_its_text(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "plain"},
            {"prompt": "P", "completion": "C"},
            {"instruction": "I", "output": "O"},
            {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
        ],
    )
    assert read_texts(str(path), "eval") == ["plain", "P\nC", "I\nO", "U\nA"]


def test_text_files_give_a_text_per_line_and_the_limit_holds(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\ntwo\nthree\n")
    assert read_texts(str(tmp_path / "a.txt"), "eval") == ["one", "two", "three"]
    assert read_texts(str(tmp_path / "a.txt"), "eval", limit=2) == ["one", "two"]


def test_eval_falls_back_to_calibration_then_to_builtin_text(tmp_path: Path) -> None:
    (tmp_path / "calib.txt").write_text("calibration line\n")
    (tmp_path / "eval.txt").write_text("eval line\n")
    calib, ev = str(tmp_path / "calib.txt"), str(tmp_path / "eval.txt")
    assert eval_texts(ev, calib) == (["eval line"], ev)
    assert eval_texts(None, calib) == (["calibration line"], calib)
    assert eval_texts(None, None) == (list(DEFAULT_EVAL_TEXT), "builtin:english")


def _spec(**fields: object) -> QuantizeJobSpec:
    return QuantizeJobSpec.model_validate(
        {"output": {"uri": "file:///out"}, "model": {"uri": "file:///model"}, **fields}
    )


def test_layers_that_cannot_be_grouped_are_kept_and_the_loader_agrees(tmp_path: Path) -> None:
    """With group size 128, down_proj's 192 inputs cannot be grouped: it joins the skip
    list, and transformers' loader, reading that list, leaves exactly it unquantized."""
    import torch
    from torchao.utils import TorchAOBaseTensor
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TorchAoConfig

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    spec = _spec(method="int4-weight-only", groupSize=128)
    choice = methods.choose(spec, torch.device("cpu"))
    skip, targets = methods.skip_list(model, spec, choice)
    assert len(targets) == 12 and not any("down_proj" in t or "lm_head" in t for t in targets)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), quantization_config=TorchAoConfig(choice.config, modules_to_not_convert=skip)
    )
    quantized = {
        name
        for name, m in loaded.named_modules()
        if isinstance(getattr(m, "weight", None), TorchAOBaseTensor)
    }
    assert quantized == set(targets)


def test_a_model_with_nothing_left_to_quantize_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model(tmp_path_factory))
    spec = _spec(method="int4-weight-only", groupSize=128)  # hidden 64, intermediate 192
    with pytest.raises(BadInputError, match="no linear layer is left"):
        methods.skip_list(model, spec, methods.choose(spec, torch.device("cpu")))
