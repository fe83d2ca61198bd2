"""The serving engine: paged KV cache, continuous batching, chunked prefill, prefix caching.

Lessons: lessons/07-kv-cache.py (paged cache, prefix caching), lessons/08-serving.py (scheduler,
continuous batching, sampling per request). Shaped like nano-vllm: Sequence, BlockManager,
Scheduler, ModelRunner, LLMEngine.step() = schedule -> run -> postprocess. Start in llm.py.
"""
from .llm import LLM, LLMEngine, RequestError, RequestOutput, StepOutput
from .sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "RequestError", "StepOutput"]
