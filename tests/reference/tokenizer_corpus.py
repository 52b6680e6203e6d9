#!/usr/bin/env python3
"""Writes a deterministic corpus of varied text, one JSON string per line, for the tokenizer
tests: every Unicode plane in use, emoji with ZWJ sequences, CJK, combining marks, control
characters, runs of spaces/tabs/newlines, digits, very long words, empty strings, mixed scripts.
Only valid Unicode scalar values (no surrogates), so every string is valid UTF-8.

usage: tokenizer_corpus.py OUT.jsonl [N] [--single-line]
  --single-line drops strings containing \\n or \\r (for line-oriented stdin checks)."""
import json
import random
import sys
import unicodedata

RNG = random.Random(20261128)

RANGES = [
    (0x0041, 0x007A), (0x00C0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x05FF),
    (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x1100, 0x11FF), (0xAC00, 0xD7A3),
    (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0x2000, 0x206F), (0x2190, 0x23FF), (0xFF00, 0xFFEF),
    (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF), (0x10000, 0x1007F), (0x20000, 0x2A6DF),
    (0x2F800, 0x2FA1F), (0x30000, 0x3134A), (0xE0001, 0xE007F), (0xF0000, 0xF00FF), (0xE000, 0xE0FF),
]
WORDS = ("the quick brown fox jumps over lazy dog Hello world tokenization Llama é café naïve "
         "straße Ελληνικά русский язык עברית العربية हिन्दी ไทย 한국어 日本語 中文 漢字 "
         "can't won't it's we're they've I'm you'll he'd <s> </s> <unk> [INST] <<SYS>> ▁ ▁▁x").split()
ZWJ = ["\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466", "\U0001F3F3\uFE0F\u200D\U0001F308",
       "\U0001F469\U0001F3FD\u200D\U0001F4BB", "\U0001F1EB\U0001F1F7", "\u2764\uFE0F", "\U0001F44D\U0001F3FF"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00A0", "\u3000", "\u2003", "\v", "\f"]


def random_char():
    while True:
        lo, hi = RNG.choice(RANGES)
        c = chr(RNG.randint(lo, hi))
        if unicodedata.category(c) not in ("Cn", "Cs"):
            return c


def random_token():
    r = RNG.random()
    if r < 0.35:
        return RNG.choice(WORDS)
    if r < 0.45:
        return str(RNG.randint(0, 10 ** RNG.randint(1, 12)))
    if r < 0.55:
        return "".join(random_char() for _ in range(RNG.randint(1, 6)))
    if r < 0.62:
        return RNG.choice(ZWJ)
    if r < 0.70:
        return RNG.choice("aeiouxyz") + "".join(chr(RNG.randint(0x300, 0x36F)) for _ in range(RNG.randint(1, 4)))
    if r < 0.76:
        return chr(RNG.randint(1, 31)) if RNG.random() < 0.8 else chr(RNG.choice([0, 0x7F, 0x85, 0x9F]))
    if r < 0.88:
        return RNG.choice(SPACES)
    return RNG.choice("!?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|~`")


def line(i):
    kind = i % 50
    if kind == 0:
        return ""
    if kind == 1:  # a very long word
        unit = RNG.choice(["a", "ab", "xyz", "é", "中", "\U0001F600", "9", "\u0301a"])
        return unit * RNG.randint(1000, 6000)
    if kind == 2:
        return "".join(RNG.choice(SPACES) for _ in range(RNG.randint(1, 30)))
    if kind == 3:
        return "".join(random_char() for _ in range(RNG.randint(1, 3000)))
    parts = []
    for _ in range(RNG.randint(1, 25)):
        parts.append(random_token())
        if RNG.random() < 0.7:
            parts.append(" ")
    return "".join(parts)


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else 6000
    single = "--single-line" in sys.argv
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            s = line(i)
            if single:
                s = s.replace("\n", " ").replace("\r", " ")
            f.write(json.dumps(s, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
