"""Worked solutions to the exercises of lesson 02 (the tokenizer: byte-level BPE).

Run from the repository root: `python lessons/solutions/02-tokenizer.py` (all exercises) or
`python lessons/solutions/02-tokenizer.py 2 5` (some). TINYINFER_LESSON_SMALL=1 trains on less
text. The lesson's check cells import longest_tokens, inner_space_tokens, merges_are_prefix,
pieces and stream_decode_is_right from here.
"""
import codecs
import functools
import os
from collections import Counter

from tinyinfer import corpus
from tinyinfer.lesson_tools import check, compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.tokenizer import GPT2_SPLIT_PATTERN, Tokenizer, bytes_to_unicode, pretokenize

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"


# ---- what the check cells use -------------------------------------------------------------------


def longest_tokens(tokenizer) -> set[bytes]:
    """The bytes of the tokens that are longest in bytes (all of them, if several tie)."""
    tokens = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
    longest = max(map(len, tokens))
    return {t for t in tokens if len(t) == longest}


def inner_space_tokens(tokenizer) -> list[bytes]:
    """Tokens with a space somewhere after their first byte that are not whitespace only."""
    tokens = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
    return [t for t in tokens if b" " in t[1:] and t.strip()]


def merges_are_prefix(texts, small_vocab: int, large_vocab: int) -> bool:
    """Are all merges learned for small_vocab the first merges learned for large_vocab?"""
    small = Tokenizer.train(texts, vocab_size=small_vocab, progress=False).merges
    large = Tokenizer.train(texts, vocab_size=large_vocab, progress=False).merges
    return large[:len(small)] == small


def pieces(tokenizer, text: str) -> list[str]:
    """The text of each token `text` becomes."""
    return [tokenizer.decode([i]) for i in tokenizer.encode(text)]


def stream_decode(ids, tokenizer):
    """Yield text as ids arrive; bytes of a character that is not complete yet wait for the rest."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # keeps a partial character inside
    for i in ids:
        text = decoder.decode(tokenizer.decode_bytes([i]))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)  # bytes left at the end are a truly broken character
    if tail:
        yield tail


STREAM_SAMPLES = ["🙂", "naïve café 日本語 🙂👍🏽!", "x = '世界'\n    return x  # ✓"]


def stream_decode_is_right(fn, tokenizer) -> bool:
    """Does fn(ids) yield pieces that join to the text, none of them holding a '�'? Says why not."""
    for text in STREAM_SAMPLES:
        ids = tokenizer.encode(text)
        got = list(fn(ids))
        if "".join(got) != text:
            print(f"stream_decode: the pieces of {text!r} join to {''.join(got)!r}")
            return False
        if any("\ufffd" in piece for piece in got):
            print(f"stream_decode: a piece of {text!r} holds a replacement character: {got}")
            return False
    return True


# ---- shared set-up ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def shipped():
    return Tokenizer.from_file(repo_root() / "models" / "tiny" / "tokenizer.json")


@functools.lru_cache(maxsize=None)
def training_texts():
    """The lesson's training documents of section 4: the training split without every fourth help topic."""
    splits = corpus.split_documents()
    topics = [d for d in splits["train"] if d.name.startswith("pydoc/")]
    held_out = {d.name for d in topics[3::4]}
    pool = [d for d in splits["train"] if d.name not in held_out]
    return tuple(d.text for d in pool[:40 if SMALL else 160])


def readable(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace(" ", "␣").replace("\n", "↵")


# ---- exercise 1 -----------------------------------------------------------------------------------


def exercise_1():
    """The longest tokens of the shipped tokenizer."""
    tok = shipped()
    tokens = sorted((tok.decode_bytes([i]) for i in range(tok.vocab_size) if i not in tok.special_tokens.values()),
                    key=len, reverse=True)
    print("the 15 longest ordinary tokens (bytes):")
    for t in tokens[:15]:
        print(f"   {len(t):3d}  {readable(t)!r}")
    top = tokens[:50]
    kinds = Counter("whitespace" if not t.strip() else "a word" if t.strip().isalpha() else "other" for t in top)
    print(f"of the 50 longest: {kinds['whitespace']} whitespace only, {kinds['a word']} a word, "
          f"{kinds['other']} other (punctuation runs, mixed)")
    print("The training split is mostly Python: a newline followed by the indentation of a nested block is "
          "a long string that recurs everywhere, so it becomes a token; the long words are Python's own "
          "(isinstance, ValueError), and runs such as '----' are separator lines and heading underlines "
          "of docstrings and help topics.")
    answer = {tokens[0]} | {t for t in tokens if len(t) == len(tokens[0])}
    check(answer, longest_tokens(tok), name="longest_tokens")


# ---- exercise 2 -----------------------------------------------------------------------------------


def merges_without_pretokenization(text: str, n_merges: int) -> list[bytes]:
    """Greedy BPE on the raw bytes of one text, no pre-tokens: a pair may cross a space or a word.

    Plain and slow (the whole text is recounted for every merge), fine for a few merges.
    """
    seq = [bytes([b]) for b in text.encode("utf-8")]
    learned = []
    for _ in range(n_merges):
        pairs = Counter(zip(seq, seq[1:]))
        (a, b), _count = max(pairs.items(), key=lambda item: item[1])
        merged, out, i = a + b, [], 0
        while i < len(seq):
            if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                out.append(merged)
                i += 2
            else:
                out.append(seq[i])
                i += 1
        seq = out
        learned.append(merged)
    return learned


def exercise_2():
    """Tokens never hold a space inside a word; and training without pre-tokens."""
    tok = shipped()
    bad = inner_space_tokens(tok)
    print(f"tokens with a space after their start that are not whitespace only: {len(bad)}")
    print(f"GPT2_SPLIT_PATTERN = {GPT2_SPLIT_PATTERN}")
    print("Every alternative but the last two allows at most one space, at its start (' ?\\p{L}+', ' ?\\p{N}+', "
          "' ?[^\\s\\p{L}\\p{N}]+'; the contractions have none); the last two, '\\s+(?!\\S)' and '\\s+', "
          "match whitespace only. A merge never crosses a pre-token's border, so every token is a piece of "
          "one pre-token and inherits its shape.")
    check(len(bad), 0, name="inner_space_count")
    text = "".join(training_texts())[:40_000]
    raw = merges_without_pretokenization(text, 20)
    with_pre = Tokenizer.train([text], vocab_size=256 + 20 + 1, progress=False).merges
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    with_pre = [bytes(byte_of[c] for c in a + b) for a, b in with_pre]
    print(f"the first 20 merges on the same {len(text):,} characters:")
    print("   with pre-tokens:   ", ", ".join(readable(m) for m in with_pre))
    print("   without pre-tokens:", ", ".join(readable(m) for m in raw))
    crossing = [m for m in raw if m.strip() and b" " in m[1:]]  # the rule of the first question, broken
    print(f"{len(crossing)} of the merges without pre-tokens have a space after their start and are not whitespace "
          f"only ({', '.join(repr(readable(m)) for m in crossing) or 'none'}): the end of one word glued to the "
          f"space before the next, a piece the pre-tokenizer never lets form")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """A smaller vocabulary's merges are the first merges of a larger one."""
    texts = list(training_texts()[:10])
    small = Tokenizer.train(texts, vocab_size=300, progress=False).merges
    large = Tokenizer.train(texts, vocab_size=400, progress=False).merges
    print(f"{len(small)} merges at V = 300, {len(large)} at V = 400; the first {len(small)} identical: "
          f"{large[:len(small)] == small}")
    print("Greedy BPE decides each merge from the counts left by the merges before it, and never looks "
          "ahead at how many merges it will make in total; ties are broken by the pair's ids, which are "
          "the same in both runs. So two runs on the same texts make the same choices step by step, and "
          "the smaller one simply stops earlier.")
    check(large[:len(small)] == small, True, name="prefix_holds")


# ---- exercise 4 -----------------------------------------------------------------------------------


def exercise_4():
    """How numbers are cut, by the shipped tokenizer and by a larger one."""
    tok = shipped()
    for text in ("1234567", "3.14159"):
        print(f"shipped (V = {tok.vocab_size}): {text!r} -> {pieces(tok, text)}")
    digit_tokens = [t for t in (tok.decode([i]) for i in range(tok.vocab_size))
                    if t.strip().isdigit() and len(t.strip()) > 1]
    print(f"the shipped vocabulary has {len(digit_tokens)} tokens of several digits {digit_tokens}: in its "
          "training text, pairs of digits were rarer than the pairs that took its merges")
    size = 2048 if SMALL else 8192
    larger = Tokenizer.train(list(training_texts()), vocab_size=size, progress=False)
    numbers = sorted({t for t in (larger.decode([i]) for i in range(larger.vocab_size))
                      if t.strip().isdigit() and len(t.strip()) > 1}, key=lambda t: (len(t), t))
    print(f"trained as in section 5 with V = {size}: {len(numbers)} tokens of several digits"
          + (f", e.g. {numbers[:12]}" if numbers else ""))
    for text in ("1234567", "3.14159", "in 1999 and 2024"):
        print(f"   {text!r} -> {pieces(larger, text)}")
    print("Which chunks of digits become tokens depends on what the training text happened to repeat "
          "(years, line numbers, constants), so the same digit gets different tokens in different numbers and "
          "a sum's digits do not line up with its operands'. Splitting every digit (SmolLM2's 'smollm' "
          "pre-tokenizer, LLaMA 1 and 2, Gemma) makes every number spelled the same way, digit by digit:")
    print("   smollm pre-tokens of 'x = 12345':", pretokenize("x = 12345", "smollm"))
    check(pieces(tok, "1234567"), list("1234567"), name="split_1234567")


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """Streaming decode that holds back incomplete characters."""
    tok = shipped()
    text = "naïve 🙂 日本"
    ids = tok.encode(text)
    print("one token at a time, decoded alone:", [tok.decode([i]) for i in ids])
    streamed = list(stream_decode(ids, tok))
    print("stream_decode yields:              ", streamed)
    print("An incremental UTF-8 decoder keeps the first bytes of a character until its last byte "
          "arrives; only bytes that can never form a character (or a stream that stops in the middle "
          "of one) become '\ufffd'.")
    check(stream_decode_is_right(lambda ids: stream_decode(ids, tok), tok), True, name="stream_decode")


# ---- exercise 6 -----------------------------------------------------------------------------------

# A little German, written for this exercise: enough text to learn a few hundred merges.
GERMAN = """\
Der Zug nach Hamburg fährt heute später ab, weil auf der Strecke gebaut wird. Die Reisenden warten
auf dem Bahnsteig und trinken Kaffee aus Pappbechern. Ein Kind fragt seine Mutter, warum die Züge
nicht einfach über die Baustelle fliegen können. Die Mutter lacht und sagt, dass Züge leider keine
Flügel haben. Neben ihnen liest ein älterer Herr die Zeitung und schüttelt den Kopf über die Preise
für Gemüse. In der Bäckerei gegenüber gibt es frische Brötchen, Brezeln und Kuchen mit Äpfeln.
Die Verkäuferin kennt die meisten Kunden beim Namen und weiß, was sie jeden Morgen kaufen.
Am Nachmittag regnet es in der ganzen Stadt, und die Straßen werden schnell nass und glatt.
Viele Menschen fahren deshalb mit der Straßenbahn statt mit dem Fahrrad zur Arbeit.
Die Schule beginnt um acht Uhr, und die Kinder müssen pünktlich in ihren Klassenzimmern sitzen.
Im Unterricht lernen sie Mathematik, Deutsch, Englisch und Geschichte, und am Freitag haben sie Sport.
Der Lehrer erklärt, wie man große Zahlen schriftlich addiert und subtrahiert.
Nach der Schule spielen die Kinder im Park Fußball oder fahren mit ihren Rollern um den See.
Am Abend kochen die Eltern Suppe mit Kartoffeln, Karotten und Zwiebeln, und alle essen zusammen.
Danach liest der Vater eine Geschichte vor, und die Kinder gehen müde ins Bett.
Im Sommer fahren viele Familien an die Ostsee oder in die Berge, um sich zu erholen.
An der Küste weht fast immer ein frischer Wind, und das Wasser ist kälter als im Süden.
In den Bergen wandern die Menschen auf schmalen Wegen zu Hütten, in denen es warmes Essen gibt.
Die Bücherei der Stadt hat am Samstag geöffnet, und dort kann man Bücher, Zeitschriften und Filme ausleihen.
Die Bibliothekarin empfiehlt einen Roman über eine Familie, die in einem kleinen Dorf am Fluss lebt.
Im Herbst fallen die Blätter von den Bäumen, und die Tage werden kürzer und kühler.
Im Winter liegt manchmal Schnee, und die Kinder bauen Schneemänner und fahren mit dem Schlitten.
Auf dem Weihnachtsmarkt riecht es nach gebrannten Mandeln, Glühwein und Lebkuchen.
Die Geschäfte sind voll, weil alle noch Geschenke für ihre Freunde und Verwandten suchen.
Im Frühling blühen die Blumen wieder, und die Vögel singen früh am Morgen vor dem Fenster.
"""
GERMAN_HELD_OUT = "Die Kinder fahren am Wochenende mit dem Zug zu ihren Großeltern in die Berge."
ENGLISH_HELD_OUT = "The children take the train to their grandparents in the mountains at the weekend."
MORE_SCRIPTS = {"French": "Les grandes routes traversent le pont près de la gare.",
                "Russian": "Мы сегодня изучаем, как работает токенизатор.",
                "Greek": "Σήμερα μαθαίνουμε πώς δουλεύει ένας αναλυτής κειμένου.",
                "Hindi": "आज हम सीखते हैं कि टोकनाइज़र कैसे काम करता है।"}


def tokens_per_char(tokenizer, text: str) -> float:
    return len(tokenizer.encode(text)) / len(text)


def exercise_6():
    """Cost by language, both ways round."""
    tok = shipped()
    for name, text in MORE_SCRIPTS.items():
        print(f"{name:>8}: {tokens_per_char(tok, text):.2f} tokens per character, "
              f"{len(text.encode()) / len(text):.2f} bytes per character")
    # 384 tokens: 127 merges, few enough that they are the language's common pieces rather than
    # whole phrases of this short text
    german = Tokenizer.train([GERMAN], vocab_size=384, progress=False)
    print(f"a tokenizer trained on {len(GERMAN):,} characters of German: {len(german.merges)} merges")
    costs = {}  # name -> (English, German) tokens per character
    for name, tokenizer in (("shipped", tok), ("German-trained", german)):
        costs[name] = (tokens_per_char(tokenizer, ENGLISH_HELD_OUT), tokens_per_char(tokenizer, GERMAN_HELD_OUT))
        print(f"{name:>15} (V = {tokenizer.vocab_size:4d}): English {costs[name][0]:.2f}, German {costs[name][1]:.2f} "
              "tokens per character (sentences in neither training text)")
    for name, (english, german_cost) in costs.items():
        print(compare(english, german_cost, what=f"The {name} tokenizer", verb="charges English",
                      of="what it charges German per character", more="English costs more",
                      less="English costs less"))
    own_cheaper = costs["shipped"][0] < costs["shipped"][1] and costs["German-trained"][1] < costs["German-trained"][0]
    if own_cheaper:
        print("Each tokenizer charges least for the language it was trained on: a model whose tokenizer was "
              "trained mostly on another language spends more of its context, and more decoding steps, on "
              "English text, as English-trained models do on everything else.")
    else:
        print("Here one tokenizer does not charge least for its own language: the German sample is too short "
              "to learn its common pieces; train on more German text.")


if __name__ == "__main__":
    run_exercises(globals())
