#!/usr/bin/env python3
"""Reference for lorad's byte-level BPE, written from the GPT-2 / HF tokenizers definitions (the
`regex` module runs the real pre-tokenizer patterns; BPE is GPT-2's classic "merge the lowest
ranked pair everywhere" loop), never from lorad's C code. No HF `tokenizers` package is needed.

It trains a small byte-level BPE on generated text and writes one tokenizer.json per
pre-tokenizer style, with the ids and decodings this reference gives for a test corpus:
  gpt2    ByteLevel(use_regex, add_prefix_space) alone, merges as "a b" strings
  llama3  Split(Llama 3 regex) + ByteLevel(use_regex false), ignore_merges, BOS by
          TemplateProcessing, merges as [a, b] pairs, a few whole words in the vocab without merges
  smollm  Digits(individual_digits) + ByteLevel(use_regex), merges as [a, b] pairs

usage: byte_bpe_ref.py fixtures OUT_DIR [N]
         OUT_DIR/corpus.jsonl (one JSON string a line), OUT_DIR/STYLE/tokenizer.json and
         OUT_DIR/STYLE.expected ("id id ...<TAB>json(decoded)" a line)
       byte_bpe_ref.py cli LORAD_BIN MAKE_DEMO_MODEL [N]
         the same fixtures in a temporary directory, then `lorad tokenize --ids` over the
         single-line part of the corpus must print the reference ids, for each style and for the
         demo model's tokenizer (256 byte pieces, ChatML specials, no merges)."""
import collections
import heapq
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_corpus  # noqa: E402  (the shared varied-text generator)

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
N_MERGES = 3000
RNG = random.Random(4242)


def bytes_to_unicode():
    """GPT-2: bytes 33..126, 161..172, 174..255 stand for themselves, the others (in byte order)
    for U+0100 upwards."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_CHAR = bytes_to_unicode()
CHAR_BYTE = {c: b for b, c in BYTE_CHAR.items()}

STYLES = {
    "gpt2": dict(regex=GPT2_RE, digits=False, prefix_space=True, ignore_merges=False, bos=None, pairs=False),
    "llama3": dict(regex=LLAMA3_RE, digits=False, prefix_space=False, ignore_merges=True,
                   bos="<|begin_of_text|>", pairs=True),
    "smollm": dict(regex=GPT2_RE, digits=True, prefix_space=False, ignore_merges=False, bos=None, pairs=True),
}

# Text aimed at what byte-level pre-tokenizers care about.
CONTRACTIONS = ["don't", "DON'T", "We'Re", "they'VE", "I'M", "you'LL", "he'D", "it'S", "'ſ", "'ſt", "o'clock",
                "rock'n'roll", "''s", "'''", "' s", "'re'", "l'été", "'Ll", "'sss", "d'Artagnan"]
NUMBERS = ["12345678", "3.14159", "1,000,000", "٣٤٥", "²³", "½", "Ⅻ", "१२३", "x86_64", "2024-11-28", "007",
           "1e-9", "v2", "10⁵", "۱۲۳۴"]
SPACES = ["  ", "   ", " \n ", "\n\n\n", "  \r\n\r\n  ", "\t\t", "\u00a0", " \u3000", "\u2009", " \n", "\r", "\n ",
          "\t\n", "    \n\n    "]
WORDS = ["hello", "world", "Hello", "WORLD", "tokenizer", "byte", "level", "merge", "the", "of", "and", "é", "café",
         "naïve", "Straße", "Ελληνικά", "русский", "עברית", "العربية", "हिन्दी", "ไทย", "한국어", "日本語", "中文",
         "😀", "👍🏿", "🏳️‍🌈", "👨‍👩‍👧‍👦", "→", "—", "«quote»", "¿qué?", "...", "!!", "?!", "(x)", "{a: 1}",
         "#include", "<html>", "\u0301e", "x\u0308", "ſ"]
SPECIAL_SNIPPETS = ["<|im_start|>user\nhi<|im_end|>", "x<|endoftext|>y", "<|endoftext|>", "<|im_start|",
                    "<|im_end|><|im_start|>", " <|endoftext|> "]


def byte_level_line(rng, with_specials):
    parts = []
    for _ in range(rng.randint(1, 20)):
        r = rng.random()
        pool = (CONTRACTIONS if r < 0.2 else NUMBERS if r < 0.35 else SPACES if r < 0.5
                else SPECIAL_SNIPPETS if r < 0.55 and with_specials else WORDS)
        parts.append(rng.choice(pool))
        parts.append(rng.choice([" ", " ", " ", "", "\n", ", "]))
    return "".join(parts)


def consistent(s):
    """The regex module may know a newer Unicode than unicodedata (lorad's table); keep only text
    whose letters and numbers both agree on."""
    for c in set(s):
        cat = unicodedata.category(c)[0]
        if (cat == "L") != bool(regex.match(r"\p{L}", c)) or (cat == "N") != bool(regex.match(r"\p{N}", c)):
            return False
    return True


def corpus(n):
    lines = [tokenizer_corpus.line(i) for i in range(n)]
    lines += [byte_level_line(RNG, True) for _ in range(n)]
    return [s for s in lines if consistent(s)]


class ByteBPE:
    def __init__(self, style, vocab, merges, specials):
        self.style = style
        self.pattern = regex.compile(style["regex"])
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.specials = specials
        self.special_re = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))

    def pre_tokenize(self, text):
        pieces = regex.findall(r"\p{N}|[^\p{N}]+", text) if self.style["digits"] else [text]
        words = []
        for p in pieces:
            if self.style["prefix_space"] and not p.startswith(" "):
                p = " " + p
            words += self.pattern.findall(p)
        return words

    def bpe(self, word):
        if self.style["ignore_merges"] and word in self.vocab:
            return [word]
        symbols = list(word)
        while len(symbols) > 1:
            pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode_plain(self, text):
        ids = []
        for w in self.pre_tokenize(text):
            mapped = "".join(BYTE_CHAR[b] for b in w.encode("utf-8"))
            ids += [self.vocab[t] for t in self.bpe(mapped)]
        return ids

    def encode(self, text):
        ids = [self.vocab[self.style["bos"]]] if self.style["bos"] else []
        pos = 0
        for m in self.special_re.finditer(text):
            if m.start() > pos:
                ids += self.encode_plain(text[pos:m.start()])
            ids.append(self.vocab[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self.encode_plain(text[pos:])
        return ids

    def decode(self, ids):
        out = b""
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self.specials:
                continue
            if all(c in CHAR_BYTE for c in tok):
                out += bytes(CHAR_BYTE[c] for c in tok)
            else:
                out += tok.encode("utf-8")
        return out.decode("utf-8", errors="replace")


def train(style, texts, n_merges):
    """Plain BPE training over byte-level pre-tokens: repeatedly merge the most frequent pair."""
    pre = ByteBPE(style, {}, [], SPECIALS)
    counts = collections.Counter()
    for t in texts:
        for w in pre.pre_tokenize(t):
            counts["".join(BYTE_CHAR[b] for b in w.encode("utf-8"))] += 1
    words = [list(w) for w in counts]
    freq = list(counts.values())
    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += freq[wi]
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    vocab = {BYTE_CHAR[b]: b for b in range(256)}
    merges = []
    while heap and len(merges) < n_merges:
        c, pair = heapq.heappop(heap)
        if -c != pair_count.get(pair, 0) or -c < 2 or len(pair[0]) + len(pair[1]) > 32:
            continue  # stale, rare, or a piece of a very long repeated word
        merges.append(pair)
        new = pair[0] + pair[1]
        vocab.setdefault(new, len(vocab))
        touched = set()
        for wi in list(where[pair]):
            w = words[wi]
            for a, b in zip(w, w[1:]):
                pair_count[(a, b)] -= freq[wi]
                touched.add((a, b))
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for a, b in zip(out, out[1:]):
                pair_count[(a, b)] += freq[wi]
                where[(a, b)].add(wi)
                touched.add((a, b))
        for p in touched:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return vocab, merges, counts


def tokenizer_json(name, style, vocab, merges, special_ids):
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in special_ids.items()]
    byte_level = {"type": "ByteLevel", "add_prefix_space": style["prefix_space"], "trim_offsets": True,
                  "use_regex": True}
    if name == "llama3":
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False},
            dict(byte_level, use_regex=False)]}
        bos = style["bos"]
        post = {"type": "Sequence", "processors": [
            dict(byte_level, use_regex=False),
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [special_ids[bos]], "tokens": [bos]}}}]}
    elif name == "smollm":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        post = dict(byte_level)
    else:
        pre, post = byte_level, dict(byte_level)
    full_vocab = dict(vocab)
    full_vocab.update(special_ids)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre, "post_processor": post, "decoder": dict(byte_level),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": style["ignore_merges"], "vocab": full_vocab,
                  "merges": [list(m) if style["pairs"] else f"{m[0]} {m[1]}" for m in merges]},
    }


def write_fixtures(out, n):
    os.makedirs(out, exist_ok=True)
    lines = corpus(n)
    train_text = corpus(max(n // 2, 50))[: max(n // 2, 50)] + [byte_level_line(RNG, False) for _ in range(n)]
    with open(os.path.join(out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for s in lines:
            f.write(json.dumps(s) + "\n")
    refs = {}
    for name, style in STYLES.items():
        vocab, merges, counts = train(style, train_text, N_MERGES)
        if style["ignore_merges"]:
            # Whole frequent words as Llama 3 has them: in the vocab, unreachable by merges, so
            # only ignore_merges yields them.
            extra = [w for w, _ in counts.most_common() if w not in vocab and 2 < len(w) <= 24][:300]
            assert len(extra) > 50, "the corpus has too few words beyond the merges"
            for w in extra:
                vocab[w] = len(vocab)
        special_ids = {s: len(vocab) + k for k, s in enumerate(SPECIALS)}
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(name, style, vocab, merges, special_ids), f, ensure_ascii=False)
        full_vocab = dict(vocab)
        full_vocab.update(special_ids)
        ref = ByteBPE(style, full_vocab, merges, SPECIALS)
        refs[name] = ref
        with open(os.path.join(out, name + ".expected"), "w", encoding="utf-8") as f:
            for s in lines:
                ids = ref.encode(s)
                f.write(" ".join(map(str, ids)) + "\t" + json.dumps(ref.decode(ids)) + "\n")
    return lines, refs


def run_cli(lorad, model, lines, encode):
    data = b"".join(s.encode("utf-8") + b"\n" for s in lines)
    got = subprocess.run([lorad, "tokenize", "--model", model, "--ids"], input=data, capture_output=True,
                         check=True).stdout.decode().split("\n")
    bad = 0
    for i, s in enumerate(lines):
        want = " ".join(map(str, encode(s)))
        if i >= len(got) or got[i] != want:
            bad += 1
            if bad <= 5:
                print(f"{model} line {i + 1}: {json.dumps(s)[:200]}\n  expected {want[:300]}\n  got      "
                      f"{got[i][:300] if i < len(got) else '<missing>'}")
    if len(got) != len(lines) + 1:
        print(f"{model}: expected {len(lines)} output lines, got {len(got) - 1}")
        bad += 1
    print(f"{model}: {len(lines)} lines, {bad} mismatches")
    return bad


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "fixtures":
        write_fixtures(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3000)
        return
    if len(sys.argv) < 4 or sys.argv[1] != "cli":
        sys.exit(__doc__)
    lorad, make_demo = sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        lines, refs = write_fixtures(tmp, n)
        single = [s for s in lines if "\n" not in s]
        for name, ref in refs.items():
            bad += run_cli(lorad, os.path.join(tmp, name), single, ref.encode)
        demo = os.path.join(tmp, "demo")
        subprocess.run([sys.executable, make_demo, demo], check=True,
                       capture_output=True)
        vocab = {BYTE_CHAR[b]: b for b in range(256)}
        demo_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        vocab.update({s: 256 + k for k, s in enumerate(demo_specials)})
        demo_ref = ByteBPE(dict(STYLES["smollm"], digits=False), vocab, [], demo_specials)
        bad += run_cli(lorad, demo, single, demo_ref.encode)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
