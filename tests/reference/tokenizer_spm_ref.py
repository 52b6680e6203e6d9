#!/usr/bin/env python3
"""Expected SentencePiece results for a corpus, from python3-sentencepiece (the reference).

usage: tokenizer_spm_ref.py MODEL CORPUS.jsonl OUT.txt
Writes one line per corpus string: 'R' or 'N' (does decode(encode(x)) == x in SentencePiece),
then the ids (no BOS) space-separated, then a tab and the JSON of sentencepiece's decode."""
import json
import sys

import sentencepiece


def main():
    sp = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f, open(sys.argv[3], "w", encoding="utf-8") as out:
        for raw in f:
            text = json.loads(raw)
            ids = sp.encode(text)
            back = sp.decode(ids)
            flag = "R" if back == text else "N"
            out.write(flag + " " + " ".join(map(str, ids)) + "\t" + json.dumps(back, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
