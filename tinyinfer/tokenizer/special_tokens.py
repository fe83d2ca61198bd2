"""Special tokens: what each token id is (its type), and cutting special tokens out of text.

Lesson: lessons/02-tokenizer.py

Some tokens are not text at all: "<|endoftext|>" separates documents, "<|im_start|>" and
"<|im_end|>" frame the turns of a chat. A tokenizer must be able to produce them from a prompt
that spells them out (the chat template writes them as text), but must also be able to treat a
user's message that happens to contain "<|im_end|>" as the ten characters it is, or a user could
end their own turn and write the assistant's. So special tokens are matched only when asked.

Token types, as llama.cpp stores them in `tokenizer.ggml.token_type` (llama.h, llama_token_type):

    NORMAL        1  ordinary BPE token, bytes in GPT-2's printable form ("Ġthe")
    UNKNOWN       2  the unknown token of vocabularies that have one (never produced by BPE)
    CONTROL       3  special: "<|endoftext|>", "<|im_end|>"; matched only with special=True
    USER_DEFINED  4  added by hand, always matched as one token, even with special=False
    UNUSED        5  a placeholder (padding rows of the embedding); decodes to nothing
    BYTE          6  "<0x0A>": one raw byte (SentencePiece-style vocabularies)

How llama.cpp cuts them out (llama-vocab.cpp, tokenizer_st_partition), and so how we do: the
tokens to match are sorted longest first (in UTF-8 bytes); for each in turn, every occurrence in
every stretch of text not yet cut is replaced by the token's id. Longest first means
"<repo_name>" is found before any shorter token inside it could be.
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "TOKEN_TYPE_NAMES",
           "END_OF_GENERATION_TEXTS", "ROLE_TEXTS", "END_OF_GENERATION_ROLES", "atomic_order", "split_on_special"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TOKEN_TYPE_NAMES = {NORMAL: "NORMAL", UNKNOWN: "UNKNOWN", CONTROL: "CONTROL",
                    USER_DEFINED: "USER_DEFINED", UNUSED: "UNUSED", BYTE: "BYTE"}

# Special tokens known by their text. Conversion scripts do not always record which token ends a
# turn or marks a fill-in-the-middle part, so llama.cpp also recognises them by their text
# (llama-vocab.cpp, load_vocab), and we follow it:
#   * a token whose text is in END_OF_GENERATION_TEXTS ends a generation, and is made CONTROL;
#   * a role the file does not name (no tokenizer.ggml.<role>_token_id key) goes to a token whose
#     text is in ROLE_TEXTS[role], which is made CONTROL;
#   * the tokens of END_OF_GENERATION_ROLES end a generation too. So for SmolLM2 llama.cpp stops
#     at <|endoftext|> (0), <|im_end|> (2, eos) and <reponame> (4, the StarCoder-style
#     fill-in-the-middle "repository" marker), and so does Tokenizer.stop_ids.
# (llama.cpp also drops <|end|> and </s> from the set for two model families whose pre-tokenizers
# tinyinfer does not implement, so those exceptions never apply here.)
END_OF_GENERATION_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")
ROLE_TEXTS = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
            "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
END_OF_GENERATION_ROLES = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")


def atomic_order(tokens: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """(content, id) pairs in the order they are matched: longest UTF-8 first.

    llama.cpp sorts by length with std::sort, which leaves the order of equal lengths
    unspecified; we take lower ids first. The order matters only when two tokens of the same
    length overlap in a text, which no vocabulary we know of makes possible."""
    return sorted(tokens, key=lambda t: (-len(t[0].encode("utf-8")), t[1]))


def split_on_special(text: str, ordered: list[tuple[str, int]]) -> list[str | int]:
    """Cut the tokens of `ordered` (from atomic_order) out of `text`.

    Returns the text as a list of plain-text stretches (str, never empty) and token ids (int):
    split_on_special("a<|im_end|>b", [("<|im_end|>", 2)]) -> ["a", 2, "b"].
    """
    parts: list[str | int] = [text] if text else []
    for content, token_id in ordered:
        if content not in text:          # one fast scan skips most tokens
            continue
        cut: list[str | int] = []
        for part in parts:
            if isinstance(part, int) or content not in part:
                cut.append(part)
                continue
            for k, stretch in enumerate(part.split(content)):   # non-overlapping, left to right
                if k:
                    cut.append(token_id)
                if stretch:
                    cut.append(stretch)
        parts = cut
    return parts
