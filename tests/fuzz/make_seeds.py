#!/usr/bin/python3
"""Writes the fuzzers' seed corpora (tests/fuzz/corpus/NAME/), small valid inputs of every format
so the fuzzers start past the first checks: run it again after a format changes and commit the
result. Models come from tests/formats/write_fixtures.py (written from the format specs) at a toy
size; the SentencePiece model is trained here by python3-sentencepiece on a few sentences.

usage: make_seeds.py [OUTDIR]   (default: the corpus/ folder beside this script)"""
import io
import json
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(SOURCE, "tests", "formats"))
import write_fixtures as wf  # noqa: E402

# a toy model: 32-wide rows (one Q8_0 block), one layer, the toy vocabulary's 260 tokens
wf.DIM, wf.HIDDEN, wf.LAYERS, wf.HEADS, wf.KV_HEADS, wf.VOCAB, wf.SEQ = 32, 32, 1, 2, 1, 260, 16
wf.HEAD_DIM = wf.DIM // wf.HEADS


def put(out, name, seed, data):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, seed), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(path):
    with open(path, "rb") as f:
        return f.read()


def jobspecs(out):
    base = {"model": "demo-tiny", "training_file": "file-abc"}
    put(out, "jobspec", "minimal.json", json.dumps(base))
    put(out, "jobspec", "full.json", read(os.path.join(SOURCE, "demo", "job.json")))
    put(out, "jobspec", "method.json", json.dumps({**base, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 1.5}}}}))
    put(out, "jobspec", "lora.json", json.dumps({**base, "validation_file": "file-def", "seed": 7, "suffix": "x",
                                                "hyperparameters": {"lr_scheduler": "linear", "packing": True,
                                                                    "max_steps": 10, "compute_dtype": "auto"},
                                                "lora": {"r": 4, "alpha": 8, "dropout": 0.1,
                                                         "target_modules": "all-linear", "use_rslora": True},
                                                "data": {"format": "alpaca"}}))


def infer_requests(out):
    put(out, "infer_request", "completion", b"\0" + json.dumps({
        "model": "m", "prompt": ["a", "b"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"],
        "n": 2, "seed": 1, "logprobs": 2, "stream": True, "stream_options": {"include_usage": True}}).encode())
    put(out, "infer_request", "chat", b"\1" + json.dumps({
        "model": "m", "messages": [{"role": "system", "content": "s"},
                                   {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 3, "logprobs": True, "top_logprobs": 2, "stop": "x"}).encode())


def jsonl(out):
    # first byte: format (low nibble mod 6), template (high nibble mod 3), train_on_input (8)
    lines = {1: ['{"text": "hello world"}', '{"text": ""}'],
             2: ['{"prompt": "2+2=", "completion": "4"}', 'not json'],
             3: ['{"instruction": "add", "input": "2 2", "output": "4"}'],
             4: ['{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, '
                 '{"role": "assistant", "content": "a", "weight": 1}]}', '{"messages": []}'],
             5: ['{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}']}
    for fmt, ls in lines.items():
        for tmpl in range(3):
            put(out, "jsonl", f"f{fmt}t{tmpl}", bytes([fmt | (tmpl << 4)]) + ("\n".join(ls) + "\n").encode())


def models(out):
    t = wf.make_model(1)
    with tempfile.TemporaryDirectory() as d:
        wf.write_safetensors(os.path.join(d, "a.safetensors"), {k: t[k] for k in list(t)[:3]}, "BF16", {"format": "pt"})
        put(out, "safetensors", "bf16", read(os.path.join(d, "a.safetensors")))
        wf.write_safetensors(os.path.join(d, "b.safetensors"), {"model.norm.weight": t["model.norm.weight"]}, "F32")
        put(out, "safetensors", "f32", read(os.path.join(d, "b.safetensors")))
        # hf_dir: config.json NUL index NUL shard (the index names the one shard)
        shard = "model-00001-of-00001.safetensors"
        wf.write_safetensors(os.path.join(d, shard), t, "BF16", {"format": "pt"})
        index = json.dumps({"metadata": {"total_size": 0}, "weight_map": {k: shard for k in t}})
        put(out, "hf_dir", "sharded", json.dumps(wf.config_json()).encode() + b"\0" + index.encode() + b"\0"
            + read(os.path.join(d, shard)))
        put(out, "hf_dir", "no_index", json.dumps(wf.config_json()).encode() + b"\0\0")
        wf.write_gguf(os.path.join(d, "q8.gguf"), t, "Q8_0")
        put(out, "gguf", "q8_0", read(os.path.join(d, "q8.gguf")))
        wf.write_llama2c(os.path.join(d, "model.bin"), t)
        blob = read(os.path.join(d, "model.bin"))
    # llama2c: 8-byte file size, the 28-byte header, then a llama2.c tokenizer.bin
    tok = io.BytesIO()
    pieces = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)] + [b" hello", b"he", b"llo"]
    tok.write(struct.pack("<i", max(len(p) for p in pieces)))
    for i, p in enumerate(pieces):
        tok.write(struct.pack("<fi", -float(i), len(p)) + p)
    put(out, "llama2c", "toy", struct.pack("<Q", len(blob)) + blob[:28] + tok.getvalue())


def tokenizers(out):
    import sentencepiece
    with tempfile.TemporaryDirectory() as d:
        text = os.path.join(d, "t.txt")
        with open(text, "w") as f:
            for i in range(200):
                f.write(f"the quick brown fox {i} jumps over the lazy dog, caf\u00e9 na\u00efve\n")
        sentencepiece.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(d, "m"), vocab_size=300,
                                                 model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                                 normalization_rule_name="identity", minloglevel=2)
        model = os.path.join(d, "m.model")
        put(out, "spm", "bpe_bytes", read(model))
        corpus = os.path.join(d, "c.jsonl")
        with open(corpus, "w") as f:
            f.write(json.dumps("the fox") + "\n")
        import subprocess
        subprocess.run([sys.executable, os.path.join(SOURCE, "tests", "reference", "tokenizer_hf_fixture.py"), model,
                        corpus, d], check=True, capture_output=True)
        put(out, "tokenizer_json", "spm_style", read(os.path.join(d, "tokenizer.json")) + b"\0"
            + read(os.path.join(d, "tokenizer_config.json")))
        put(out, "tokenizer_json", "no_config", read(os.path.join(d, "tokenizer.json")))


def configs(out):
    put(out, "config", "sample", "# lorad.conf\nbind = 127.0.0.1\nport = 8420\nstate_dir = /tmp/x\n"
                                 "max_upload_bytes = 64m\ninference.enabled = yes\n\n")
    put(out, "config", "bad", "port = 70000\nnope\n")


def http(out):
    # first byte: route (0 files, 1 jobs, 2 chat, 3 completions), chunked (4), quoted boundary (8)
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n"
            b"Content-Type: application/jsonl\r\n\r\n{\"text\": \"hi\"}\n\r\n--XyZ--\r\n")
    put(out, "http", "upload", b"\0" + body)
    put(out, "http", "upload_chunked", b"\4" + body)
    put(out, "http", "job", b"\1" + json.dumps({"model": "m", "training_file": "file-a"}).encode())
    put(out, "http", "chat", b"\2" + json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode())
    put(out, "http", "deep", b"\3" + b"[" * 200 + b"]" * 200)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    for f in (jobspecs, infer_requests, jsonl, models, tokenizers, configs, http):
        f(out)


if __name__ == "__main__":
    main()
