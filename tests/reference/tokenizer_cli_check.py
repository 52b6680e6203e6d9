#!/usr/bin/env python3
"""Drives the real binary: `lorad tokenize --model MODEL --ids` over stdin lines must print, line
for line, the ids python3-sentencepiece gives (with BOS, as Llama adds it).

usage: tokenizer_cli_check.py LORAD_BIN MODEL CORPUS_SCRIPT"""
import json
import subprocess
import sys
import tempfile

import sentencepiece


def main():
    lorad, model, corpus_script = sys.argv[1:4]
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
        subprocess.run([sys.executable, corpus_script, tmp.name, "5000", "--single-line"], check=True)
        with open(tmp.name, encoding="utf-8") as f:
            lines = [json.loads(x) for x in f]
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    data = b"".join(s.encode("utf-8") + b"\n" for s in lines)
    got = subprocess.run([lorad, "tokenize", "--model", model, "--ids"], input=data, capture_output=True,
                         check=True).stdout.decode().split("\n")
    bad = 0
    for i, s in enumerate(lines):
        want = " ".join(map(str, sp.encode(s, add_bos=True)))
        if i >= len(got) or got[i] != want:
            bad += 1
            if bad <= 5:
                print(f"line {i + 1}: {json.dumps(s)[:200]}\n  expected {want[:300]}\n  got      "
                      f"{got[i][:300] if i < len(got) else '<missing>'}")
    if len(got) != len(lines) + 1 or got[-1] != "":
        print(f"expected {len(lines)} output lines, got {len(got) - 1}")
        bad += 1
    print(f"{len(lines)} lines, {bad} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
