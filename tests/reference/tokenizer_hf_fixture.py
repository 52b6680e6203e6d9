#!/usr/bin/env python3
"""Builds a SentencePiece-style HF tokenizer.json (+ tokenizer_config.json) from a SentencePiece
BPE model's pieces and scores, and the expected ids for a corpus from python3-sentencepiece.

usage: tokenizer_hf_fixture.py MODEL CORPUS.jsonl OUTDIR
Writes OUTDIR/tokenizer.json, OUTDIR/tokenizer_config.json and OUTDIR/expected.txt (one line of
ids per corpus string, BOS first as add_bos_token says).

Merges: every split of a normal piece into two normal pieces, ranked by the merged piece's score
(highest first), which is the order SentencePiece's BPE applies them. Expected ids: HF splits
the text at the special added tokens first and normalises (Prepend ▁, spaces to ▁) each piece
between them on its own, which is sentencepiece's encoding of each piece (dummy prefix)."""
import json
import os
import sys

import sentencepiece

SPECIALS = ["<unk>", "<s>", "</s>"]


def main():
    model, corpus, outdir = sys.argv[1:4]
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    normal = {p: i for i, p in enumerate(pieces)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}
    merges = []
    for p, i in normal.items():
        for k in range(1, len(p)):
            left, right = p[:k], p[k:]
            if left in normal and right in normal:
                merges.append((-sp.get_score(i), i, normal[left], normal[right], left, right))
    merges.sort()
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": pieces.index(s), "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for s in SPECIALS],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                  "vocab": {p: i for i, p in enumerate(pieces)},
                  "merges": [f"{m[4]} {m[5]}" for m in merges]},
    }
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    with open(os.path.join(outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>"}, f)
    special_id = {s: pieces.index(s) for s in SPECIALS}
    with open(corpus, encoding="utf-8") as f, open(os.path.join(outdir, "expected.txt"), "w") as out:
        for raw in f:
            text = json.loads(raw)
            ids = [sp.bos_id()]
            pos = seg = 0
            while pos < len(text):
                hit = max((s for s in SPECIALS if text.startswith(s, pos)), key=len, default=None)
                if hit is None:
                    pos += 1
                    continue
                ids += sp.encode(text[seg:pos])
                ids.append(special_id[hit])
                pos = seg = pos + len(hit)
            ids += sp.encode(text[seg:])
            out.write(" ".join(map(str, ids)) + "\n")


if __name__ == "__main__":
    main()
