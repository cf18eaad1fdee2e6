"""The FineTune workload: full fine-tuning, LoRA, QLoRA or prefix tuning (peft),
bottleneck adapters (`bottleneck`) or distillation (`distill`) of a published model.

`main.run` is what `modelsmith-runtime finetune` calls. The flow is plan (cheap checks,
no torch) -> tokens (render and mask) -> model (per method) -> loop (train, eval) ->
publish (a plain model, or the adapter with a pointer to its base).
"""
