"""The QuantizeJob workload: torchao post-training quantization behind a perplexity gate.

`main.run` is what `modelsmith-runtime quantize` calls: `methods` maps each method to a
torchao config and says where it can run, `gptq` is the calibrated method, `texts`
reads the eval and calibration data.
"""
