#!/usr/bin/python3
"""`lorad export` end to end: every format from PEFT and GGUF adapters on HF (F32, BF16, tied),
GGUF and llama2.c bases, outputs checked by tests/reference/peft_merge_ref.py (ours, from PEFT's
semantics and the file specs); usage errors exit 2, bad inputs exit 1 naming the file."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ["LORAD_BIN"]
PY = os.environ.get("LORAD_PYTHON", "/usr/bin/python3")
SRC = os.environ["LORAD_SOURCE_DIR"]
REF = os.path.join(SRC, "tests", "reference", "peft_merge_ref.py")
failures = []


def run(cmd, want_status, want_text=None):
    p = subprocess.run(cmd, capture_output=True, text=True)
    what = " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))
    if p.returncode != want_status:
        failures.append(f"{what}: exit {p.returncode}, want {want_status}\n{p.stdout}{p.stderr}")
    elif want_text and want_text not in p.stdout + p.stderr:
        failures.append(f"{what}: output lacks {want_text!r}:\n{p.stdout}{p.stderr}")
    return p


def lorad(*args, status=0, text=None):
    return run([BIN, "export", *args], status, text)


def ref(*args):
    return run([PY, REF, *args], 0)


def main():
    tmp = tempfile.mkdtemp(prefix="lorad-export-")
    try:
        fx, demo = os.path.join(tmp, "fx"), os.path.join(tmp, "demo")
        run([PY, os.path.join(SRC, "tests", "formats", "write_fixtures.py"), fx], 0)
        run([PY, os.path.join(SRC, "scripts", "make-demo-model"), demo, "--dim", "64", "--layers", "2",
             "--hidden", "96", "--dtype", "BF16"], 0)
        # tokenizer files an HF base may carry besides tokenizer.json
        for name, text in (("special_tokens_map.json", '{"bos_token": "<|endoftext|>"}\n'),
                           ("generation_config.json", '{"max_new_tokens": 7}\n')):
            with open(os.path.join(demo, name), "w") as f:
                f.write(text)
        ad_fx, ad_demo = os.path.join(tmp, "ad_fx"), os.path.join(tmp, "ad_demo")
        ref("make-adapter", os.path.join(fx, "hf_f32", "config.json"), ad_fx, "4", "8", "0", "1")
        ref("make-adapter", os.path.join(demo, "config.json"), ad_demo, "4", "6", "1", "2", demo)

        # merged, on every kind of base
        for base, model in (("hf_f32", os.path.join(fx, "hf_f32")), ("hf_bf16", os.path.join(fx, "hf_bf16")),
                            ("gguf", os.path.join(fx, "gguf_f32.gguf")), ("llama2c", os.path.join(fx, "model.bin"))):
            out = os.path.join(tmp, "merged_" + base)
            lorad("--adapter", ad_fx, "--format", "merged", "--out", out, "--model", model)
            ref("check-merged", model if base.startswith("hf") else fx, ad_fx, out)
        cfg = json.load(open(os.path.join(tmp, "merged_gguf", "config.json")))
        if cfg.get("architectures") != ["LlamaForCausalLM"] or cfg.get("torch_dtype") != "float32":
            failures.append(f"synthesised config.json: {cfg}")

        # a tied BF16 base found through base_model_name_or_path; rsLoRA; lm_head adapted -> untied
        out = os.path.join(tmp, "merged_demo")
        lorad("--adapter", ad_demo, "--format", "merged", "--out", out)
        ref("check-merged", demo, ad_demo, out)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            a, b = os.path.join(demo, name), os.path.join(out, name)
            if not os.path.exists(b) or open(a, "rb").read() != open(b, "rb").read():
                failures.append(f"merged dir: {name} not copied from the base")
        if os.path.exists(os.path.join(out, "tokenizer.model")):
            failures.append("merged dir: tokenizer.model appeared though the base has none")

        # the real llama2.c stories260K (shared classifier, head_dim 8): facts from its header
        stories = os.environ.get("LORAD_SHARED_DATA", os.path.join(SRC, "..", "shared", "data")) + "/stories260K.bin"
        scfg = os.path.join(tmp, "stories_config.json")
        with open(scfg, "w") as f:
            json.dump({"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
                       "num_key_value_heads": 4, "vocab_size": 512}, f)
        ad_st = os.path.join(tmp, "ad_stories")
        ref("make-adapter", scfg, ad_st, "2", "4", "0", "3")
        out = os.path.join(tmp, "merged_stories")
        lorad("--adapter", ad_st, "--format", "merged", "--out", out, "--model", stories)
        ref("check-merged", stories, ad_st, out)
        cfg = json.load(open(os.path.join(out, "config.json")))
        if (cfg.get("num_key_value_heads") != 4 or cfg.get("tie_word_embeddings") is not False
                or cfg.get("rms_norm_eps") != 1e-5 or cfg.get("head_dim") != 8):
            failures.append(f"stories260K merged config.json: {cfg}")
        gg3 = os.path.join(tmp, "stories.gguf")
        lorad("--adapter", ad_st, "--format", "gguf", "--out", gg3, "--model", stories)
        ref("check-gguf", ad_st, gg3, scfg)

        # gguf out, and back in: PEFT re-write and merge from the GGUF adapter
        gg = os.path.join(tmp, "fx.gguf")
        lorad("--adapter", ad_fx, "--format", "gguf", "--out", gg, "--model", os.path.join(fx, "hf_f32"))
        ref("check-gguf", ad_fx, gg, os.path.join(fx, "hf_f32", "config.json"))
        back = os.path.join(tmp, "from_gguf")
        lorad("--adapter", gg, "--format", "peft", "--out", back, "--model", os.path.join(fx, "hf_f32"))
        ref("same-adapter", ad_fx, back)
        out = os.path.join(tmp, "merged_from_gguf")
        lorad("--adapter", gg, "--format", "merged", "--out", out, "--model", os.path.join(fx, "hf_f32"))
        ref("check-merged", os.path.join(fx, "hf_f32"), ad_fx, out)
        gg2 = os.path.join(tmp, "demo.gguf")
        lorad("--adapter", ad_demo, "--format", "gguf", "--out", gg2)  # base from adapter_config.json
        ref("check-gguf", ad_demo, gg2, os.path.join(demo, "config.json"))

        # peft -> peft needs no base
        again = os.path.join(tmp, "again")
        lorad("--adapter", ad_fx, "--format", "peft", "--out", again)
        ref("same-adapter", ad_fx, again)

        # usage errors: exit 2 with the usage text
        lorad(status=2, text="usage: lorad export")
        lorad("--bogus", status=2, text="usage: lorad export")
        lorad("--adapter", ad_fx, "--format", "zip", "--out", again, status=2, text="unknown format 'zip'")
        lorad("--adapter", ad_fx, "--format", "peft", status=2, text="--out is required")
        lorad("--adapter", ad_fx, "--format", "peft", "--out", again, "extra", status=2, text="unexpected argument")
        lorad("--adapter", status=2, text="needs a value")
        lorad("--help", status=0, text="usage: lorad export")

        # run-time errors: exit 1, naming the file
        missing = os.path.join(tmp, "nope")
        lorad("--adapter", missing, "--format", "peft", "--out", again, status=1, text=missing)
        lorad("--adapter", ad_demo, "--format", "merged", "--out", os.path.join(tmp, "x"), "--model",
              os.path.join(fx, "hf_f32"), status=1, text="adapter_model.safetensors: tensor")
        lorad("--adapter", ad_fx, "--format", "gguf", "--out", os.path.join(tmp, "y.gguf"), status=1,
              text=ad_fx + ": --format gguf needs the base model")
        lorad("--adapter", gg, "--format", "peft", "--out", os.path.join(tmp, "z"), status=1,
              text="fx.gguf: reading a GGUF adapter needs the base model")
        bad = os.path.join(tmp, "bad_model")
        shutil.copytree(os.path.join(fx, "hf_f32"), bad)
        with open(os.path.join(bad, "model.safetensors"), "r+b") as f:
            f.truncate(100)
        lorad("--adapter", ad_fx, "--format", "merged", "--out", os.path.join(tmp, "w"), "--model", bad,
              status=1, text="bad_model")
        for leftover in ("x", "y.gguf", "z", "w"):
            p = os.path.join(tmp, leftover)
            if os.path.exists(p) and os.listdir(p) if os.path.isdir(p) else os.path.exists(p):
                failures.append(f"a failed export left {p} behind")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print("export_cli: all checks passed")


if __name__ == "__main__":
    main()
