#!/usr/bin/python3
"""`lorad export` end to end: every format from PEFT and GGUF adapters on HF (F32, BF16, tied),
GGUF and llama2.c bases, outputs checked by tests/reference/peft_merge_ref.py (ours, from PEFT's
semantics and the file specs), and from an adapter.tar made by GNU tar in ustar, pax and GNU
format (same bytes as from the directory); usage errors exit 2, bad inputs (damaged archives included) exit 1 naming the file."""
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

        # DoRA (PEFT's lora_magnitude_vector): merged on an F32 and a BF16 base, PEFT round trip,
        # and GGUF refused with the reason, leaving no file behind
        ad_dora = os.path.join(tmp, "ad_dora")
        ref("make-adapter", os.path.join(fx, "hf_f32", "config.json"), ad_dora, "3", "6", "0", "4", "none", "1")
        for base in ("hf_f32", "hf_bf16"):
            out = os.path.join(tmp, "merged_dora_" + base)
            lorad("--adapter", ad_dora, "--format", "merged", "--out", out, "--model", os.path.join(fx, base))
            ref("check-merged", os.path.join(fx, base), ad_dora, out)
        again = os.path.join(tmp, "again_dora")
        lorad("--adapter", ad_dora, "--format", "peft", "--out", again)
        ref("same-adapter", ad_dora, again)
        gg_dora = os.path.join(tmp, "dora.gguf")
        lorad("--adapter", ad_dora, "--format", "gguf", "--out", gg_dora, "--model", os.path.join(fx, "hf_f32"),
              status=1, text="DoRA adapter cannot be written as a GGUF LoRA")
        if os.path.exists(gg_dora):
            failures.append("a refused DoRA GGUF export left a file")

        # adapter.tar (the API's one-file download), made by GNU tar as an independent producer:
        # every format from the archive equals the same export from the directory, byte for byte
        def make_tar(src, tar_path, *extra):
            run(["tar", "--format=ustar", "-cf", tar_path, "-C", os.path.dirname(src), os.path.basename(src),
                 *extra], 0)

        def same_bytes(a, b):
            if open(a, "rb").read() != open(b, "rb").read():
                failures.append(f"{a} and {b} differ")

        tar_demo = os.path.join(tmp, "demo_adapter.tar")
        make_tar(ad_demo, tar_demo)
        gg_tar = os.path.join(tmp, "demo_from_tar.gguf")
        lorad("--adapter", tar_demo, "--format", "gguf", "--out", gg_tar)  # base from the tar's config
        if os.path.exists(gg_tar):
            same_bytes(gg2, gg_tar)
        peft_dir, peft_tar = os.path.join(tmp, "peft_from_dir"), os.path.join(tmp, "peft_from_tar")
        lorad("--adapter", ad_demo, "--format", "peft", "--out", peft_dir)
        lorad("--adapter", tar_demo, "--format", "peft", "--out", peft_tar)
        ref("same-adapter", ad_demo, peft_tar)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            if os.path.exists(os.path.join(peft_tar, name)):
                same_bytes(os.path.join(peft_dir, name), os.path.join(peft_tar, name))
        out = os.path.join(tmp, "merged_from_tar")
        lorad("--adapter", tar_demo, "--format", "merged", "--out", out)
        ref("check-merged", demo, ad_demo, out)
        # pax (GNU tar --format=pax and --posix: an 'x' header before every member, as macOS tar
        # writes too) and GNU format; folder names over 100 chars force a GNU 'L' long-name header
        # and, over 155, a pax path record: each exports the same bytes as the directory
        long_dir = os.path.join(tmp, "d" * 170)
        shutil.copytree(ad_demo, long_dir)
        for name, fmt, src in (("pax.tar", "--format=pax", ad_demo), ("posix.tar", "--posix", ad_demo),
                               ("gnu_long.tar", "--format=gnu", long_dir), ("pax_long.tar", "--format=pax", long_dir)):
            t = os.path.join(tmp, name)
            run(["tar", fmt, "-cf", t, "-C", tmp, os.path.basename(src)], 0)
            data = open(t, "rb").read()
            kind = b"L" if fmt == "--format=gnu" else b"x"
            if data[156:157] != kind:  # the archive really has the extended header under test
                failures.append(f"{name}: first header has type {data[156:157]!r}, expected {kind!r}")
            if src == long_dir and (b"path=" if kind == b"x" else b"@LongLink") not in data:
                failures.append(f"{name}: no long-name record")
            out_dir = os.path.join(tmp, "peft_" + name)
            lorad("--adapter", t, "--format", "peft", "--out", out_dir)
            for member in ("adapter_model.safetensors", "adapter_config.json"):
                if os.path.exists(os.path.join(out_dir, member)):
                    same_bytes(os.path.join(peft_dir, member), os.path.join(out_dir, member))
            gg_out = os.path.join(tmp, name + ".gguf")
            lorad("--adapter", t, "--format", "gguf", "--out", gg_out)
            if os.path.exists(gg_out):
                same_bytes(gg2, gg_out)
        # a malformed pax record in a GNU-made archive: the first record's length made one too big
        # (same width, so the header's checksum is recomputed over the data only: it covers none)
        t = bytearray(open(os.path.join(tmp, "pax.tar"), "rb").read())
        sp = t.index(b" ", 512)
        n = int(t[512:sp])
        if len(str(n + 1)) == sp - 512:
            t[512:sp] = str(n + 1).encode()
        else:
            t[512:sp] = str(n - 1).encode()
        bad_tar_path = os.path.join(tmp, "pax_badlen.tar")
        with open(bad_tar_path, "wb") as f:
            f.write(t)
        lorad("--adapter", bad_tar_path, "--format", "peft", "--out", os.path.join(tmp, "z"), status=1,
              text=f"{bad_tar_path}: malformed pax extended header at byte 0: record at byte 512:")

        # members at the top level (tar -C dir .), and an unrelated extra member, are fine too
        tar_flat = os.path.join(tmp, "flat.tar")
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write("not part of the adapter\n")
        run(["tar", "--format=ustar", "-cf", tar_flat, "-C", ad_fx, ".", "-C", tmp, "README.md"], 0)
        lorad("--adapter", tar_flat, "--format", "peft", "--out", os.path.join(tmp, "peft_flat"))
        ref("same-adapter", ad_fx, os.path.join(tmp, "peft_flat"))

        # damaged archives: exit 1, the message names the archive and the problem
        raw = open(tar_demo, "rb").read()

        def bad_tar(name, data, want):
            p = os.path.join(tmp, name)
            with open(p, "wb") as f:
                f.write(data)
            lorad("--adapter", p, "--format", "peft", "--out", os.path.join(tmp, "z"), status=1,
                  text=f"{p}: {want}")

        bad_tar("cut_member.tar", raw[:len(raw) // 2], "truncated tar archive")
        # every member whole but the end-of-archive zero blocks missing (a download cut on a block edge)
        end = (len(raw.rstrip(b"\0")) + 511) // 512 * 512
        bad_tar("cut_end.tar", raw[:end], "truncated tar archive: no end-of-archive block")
        hdr = bytearray(raw)
        hdr[0] ^= 1
        bad_tar("bad_sum.tar", bytes(hdr), "damaged tar header at byte 0 (bad magic or checksum)")
        hdr = bytearray(raw)
        hdr[124:136] = b"0000000x000\0"  # the first header's size, with a valid checksum over it

        def reseal(h, at):
            h[at + 148:at + 156] = b" " * 8
            h[at + 148:at + 155] = b"%06o\0" % sum(h[at:at + 512])

        reseal(hdr, 0)
        bad_tar("bad_size.tar", bytes(hdr), "tar header at byte 0 has a bad size field")
        hdr = bytearray(raw)
        hdr[124:136] = b"%012o" % (40 << 30)  # 40 GiB (12 digits, no NUL), over the member limit
        reseal(hdr, 0)
        bad_tar("huge.tar", bytes(hdr), "tar member ad_demo/ is 42949672960 bytes, more than the")
        link = os.path.join(tmp, "link_dir")
        os.makedirs(link)
        shutil.copy(os.path.join(ad_demo, "adapter_config.json"), link)
        os.symlink(os.path.join(ad_demo, "adapter_model.safetensors"), os.path.join(link, "adapter_model.safetensors"))
        make_tar(link, os.path.join(tmp, "link.tar"))
        lorad("--adapter", os.path.join(tmp, "link.tar"), "--format", "peft", "--out", os.path.join(tmp, "z"),
              status=1, text="adapter_model.safetensors has type '2', expected a regular file")
        only_cfg = os.path.join(tmp, "only_cfg.tar")
        run(["tar", "--format=ustar", "-cf", only_cfg, "-C", ad_demo, "adapter_config.json"], 0)
        lorad("--adapter", only_cfg, "--format", "peft", "--out", os.path.join(tmp, "z"), status=1,
              text=f"{only_cfg}: the tar holds no adapter_model.safetensors")
        bad_json = os.path.join(tmp, "bad_json")
        shutil.copytree(ad_demo, bad_json)
        with open(os.path.join(bad_json, "adapter_config.json"), "w") as f:
            f.write('{"peft_type": "PROMPT_TUNING"}')
        make_tar(bad_json, os.path.join(tmp, "bad_json.tar"))
        lorad("--adapter", os.path.join(tmp, "bad_json.tar"), "--format", "peft", "--out", os.path.join(tmp, "z"),
              status=1, text="bad_json.tar: adapter_config.json: peft_type must be \"LORA\"")

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
