"""The choices our CLIs and APIs take, declared once.

This module imports nothing, so that the CLIs parse and check their flags before Paddle
loads (Paddle reads its logging settings when it is imported: ``quiet.quiet_paddle``).
"""

DECODE_STRATEGIES = ("sampling", "greedy_search")  # PaddleNLP's order: its default first
MODES = ("dynamic", "static")  # the predictor's --mode
DEVICES = ("cpu", "gpu")
EXPORT_FORMATS = ("pir", "legacy")  # model.json (Paddle 3) or model.pdmodel (PaddleNLP 2.8 on Paddle 2.x)
LOOPS = ("generation_loop", "paddlenlp")  # our GenerationLoop, PaddleNLP's own sample_d2s
# How GenerationLoop keeps the KV cache: PaddleNLP's (each step concatenates every
# layer's keys and values with the new token's), or buffers allocated once for the
# prompt and max_new_tokens and written one position per step, in place (kv_cache).
CACHES = ("concat", "static")
