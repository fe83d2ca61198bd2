"""The engine serves SmolLM2-135M-Instruct (quantized weights as the GGUF file stores them), and a
request's greedy tokens are the same bits alone, batched with prompts of other lengths, with its
prompt fed in chunks, after preemption, and as tinyinfer.generate.stream_tokens (Model.generate's
loop) makes them.

Why this needs its own test: SmolLM2's products round activations to 8-bit blocks, which turns a
1-ulp difference into logit noise (tinyinfer/invariant_attention.py), so "the same tokens" holds
only because every operation on a row is batch-invariant. Needs the model file; skipped otherwise.
"""
import pytest

from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available

pytestmark = pytest.mark.skipif(not smollm2_available(), reason=f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain what a hash table is in two sentences, then give an example in Python."]
NEW = 20


@pytest.fixture(scope="module")
def model():
    import tinyinfer

    return tinyinfer.load("smollm2")


@pytest.fixture(scope="module")
def prompts(model):
    from tinyinfer.generate import chat_prompt_ids

    return [chat_prompt_ids(model.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(model, prompts):
    """Each prompt's greedy tokens through the contiguous cache, one request at a time."""
    from tinyinfer.generate import stream_tokens
    from tinyinfer.inference import InferenceModel

    fast = InferenceModel(model)
    return [list(stream_tokens(fast, p, NEW)) for p in prompts]


def greedy(llm, prompts):
    from tinyinfer.engine import SamplingParams

    outs = llm.generate(prompts, SamplingParams(max_tokens=NEW, ignore_eos=True))
    assert llm.block_manager.num_free_blocks == llm.num_blocks  # nothing leaked
    return [o.token_ids for o in outs], [o.metrics["num_preemptions"] for o in outs]


def test_greedy_tokens_do_not_depend_on_the_batch(model, prompts, reference):
    from tinyinfer.engine import LLM

    assert len({len(p) for p in prompts}) == len(prompts)  # prompts of different lengths
    alone = [greedy(LLM(model, max_model_len=256), [p])[0][0] for p in prompts]
    assert alone == reference
    batched, _ = greedy(LLM(model, max_model_len=256), prompts)
    assert batched == reference
    chunked, _ = greedy(LLM(model, max_model_len=256, max_num_batched_tokens=7), prompts)  # prefills in 7s
    assert chunked == reference
    # a pool that holds two requests at most: the newest is preempted and recomputed
    tight = LLM(model, block_size=16, num_blocks=9, max_model_len=80)
    preempted, preemptions = greedy(tight, prompts)
    assert sum(preemptions) >= 1
    assert preempted == reference


def test_chat_stops_at_the_end_of_its_turn(model):
    """Without ignore_eos a completion stops at any of the tokenizer's end-of-generation ids
    (<|im_end|> for a chat turn) and its text does not show it."""
    from tinyinfer.engine import LLM, SamplingParams

    from tinyinfer.generate import chat_prompt_ids

    tok = model.tokenizer
    prompt = chat_prompt_ids(tok, [{"role": "user", "content": "Translate 'good morning' into Spanish."}])
    out = LLM(model, max_model_len=256).generate(prompt, SamplingParams(max_tokens=40))[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] in tok.stop_ids  # a short answer, then <|im_end|>
    assert out.text and "<|im_end|>" not in out.text
    assert out.text == tok.decode(out.token_ids[:-1])


def test_prefix_hits_give_the_same_tokens(model, prompts, reference):
    """A second request sharing the chat template's system prompt reuses its blocks: same tokens."""
    from tinyinfer.engine import LLM, SamplingParams

    llm = LLM(model, max_model_len=256, enable_prefix_caching=True)
    first, _ = greedy(llm, prompts[:1])
    again = llm.generate(prompts[1:], SamplingParams(max_tokens=NEW, ignore_eos=True))
    assert all(o.metrics["num_cached_prompt_tokens"] > 0 for o in again)
    assert [first[0]] + [o.token_ids for o in again] == reference
