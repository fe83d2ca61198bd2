"""Byte-level BPE tokenizer (GPT-2 style), written from scratch.

Lesson: lessons/02-tokenizer.py

A language model never sees text; it sees integers. This package turns text into integers and
back, the way GPT-2, SmolLM2 and most open models do, in four steps:

    1. bytes       Text becomes UTF-8 bytes. Every byte is a token, so *any* string, in any
                   script, emoji included, can be encoded: there is no "unknown token".
                   (byte_level.py: how GPT-2 writes bytes as printable characters)
    2. pre-tokens  A regular expression cuts the text into words, numbers, runs of
                   punctuation and runs of whitespace ("Hello world!" -> "Hello", " world",
                   "!"). Merges never cross these borders. Which expression is part of the
                   model: GGUF names it in tokenizer.ggml.pre (pretokenizers.py).
    3. merges      Training counts adjacent token pairs over all pre-tokens and repeatedly
                   glues the most frequent pair into a new token (training.py); encoding
                   replays the merges, lowest rank first (merges.py).
    4. specials    Tokens such as "<|endoftext|>" or "<|im_end|>" are not text at all: they
                   are cut out of the input before anything else, when asked for
                   (special_tokens.py).

The files, one idea each:

    bpe.py             the Tokenizer class: encode, decode, lookups
    byte_level.py      bytes <-> GPT-2's printable characters
    pretokenizers.py   GPT-2's regex, llama.cpp's "smollm" and "default", chosen by name
    special_tokens.py  token types (normal, control, user-defined, ...) and cutting specials out
    training.py        learning merges from a corpus
    merges.py          applying merges to one pre-token (merge_kernel.py: the same, compiled)
    cache.py           the pre-token cache, bounded in bytes
    hf_json.py         tokenizer.json (Hugging Face) in and out
    gguf_vocab.py      the tokenizer.ggml.* keys of a GGUF file in and out
    chat.py            chat templates: messages -> the prompt text (ChatML family)

The ids are the reference implementations' own: the same as Hugging Face `tokenizers` for a
tokenizer.json (tests/test_tokenizer.py) and as llama.cpp for a GGUF file
(tests/test_tokenizer_llamacpp.py, with a golden file of llama.cpp's ids so that the check runs
without llama.cpp too).
"""
from .bpe import DEFAULT_SPECIAL_TOKENS, SPECIAL_ID_ROLES, Tokenizer
from .byte_level import bytes_to_token_string, bytes_to_unicode, token_string_to_bytes, unicode_to_bytes
from .chat import ChatTemplateError, render_chat
from .gguf_vocab import TokenizerMetadataError, from_gguf_metadata, to_gguf_metadata
from .pretokenizers import GPT2_SPLIT_PATTERN, PRETOKENIZERS, get_pretokenizer, pretokenize
from .special_tokens import (BYTE, CONTROL, END_OF_GENERATION_TEXTS, NORMAL, TOKEN_TYPE_NAMES, UNKNOWN, UNUSED,
                             USER_DEFINED)

__all__ = ["Tokenizer", "bytes_to_unicode", "pretokenize", "GPT2_SPLIT_PATTERN", "PRETOKENIZERS",
           "get_pretokenizer", "from_gguf_metadata", "to_gguf_metadata", "TokenizerMetadataError",
           "ChatTemplateError", "render_chat", "DEFAULT_SPECIAL_TOKENS", "END_OF_GENERATION_TEXTS",
           "SPECIAL_ID_ROLES", "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE",
           "TOKEN_TYPE_NAMES", "bytes_to_token_string", "token_string_to_bytes", "unicode_to_bytes"]
