"""The InferenceService server (runtime: builtin): KServe's ModelServer around our engine.

`main.run` is what `modelsmith-runtime serve` calls: `settings` reads the task config
and the pod's env, `engine` owns the model and batches requests step by step (`batch`
for the KV cache, `sampling`, `text` for detokenizing, stop strings and the
blocklist), `service` is what every API shares, `openai` and `model` are the OpenAI
and KServe v1/v2 APIs, `guard` enforces keys and limits, `metrics` speaks vLLM's names.
"""
