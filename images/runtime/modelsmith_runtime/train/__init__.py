"""The PretrainJob workload: a transformers decoder trained from scratch under torchrun.

`main.run` is what `modelsmith-runtime pretrain` calls on every rank. The heavy
imports (torch, transformers) happen only after the task config and the inputs have
been checked, so bad input fails in about a second instead of after loading CUDA.
"""
