"""The transformers engine (`engine.py`) and its Qwen3-VL fast path (`fast_generate.py`)."""
