#!/usr/bin/python3
"""Our reference for `lorad generate`: greedy decoding of a LlamaForCausalLM, optionally with a
PEFT LoRA adapter, computed in float64 PyTorch by recomputing the whole sequence for every token
(no KV cache), from the maths. lorad keeps its KV cache in bf16 when every linear weight of the
base (the seven projections of every layer and the LM head) is stored in BF16; the reference then
rounds keys (after RoPE) and values to bf16 at every position, which is what such a cache holds.

The model itself is llama_lora_ref.LlamaLora (RMSNorm, RoPE, GQA attention, SwiGLU, LoRA delta
scale * B (A x), scale = alpha/r or alpha/sqrt(r) with rsLoRA); the base is read by
peft_merge_ref.load_base (an HF dir, a llama2.c .bin, or a write_fixtures.py directory whose truth
tensors the GGUF fixtures hold) and the adapter by peft_merge_ref.load_adapter. Nothing here reads
lorad's C code; lorad's result reaches us only as the file `lorad generate --dump-logits` writes:

    logits        F32 (n_generated, vocab)  row i: next-token logits after prompt + generated[:i]
    prompt_ids    I32 (n_prompt)
    generated_ids I32 (n_generated)
    __metadata__  format "lorad-generate-logits-v1", stop "eos" | "max_tokens", temperature, ...

usage:
  generate_ref.py check BASE DUMP [--adapter DIR] [--max-tokens N] [--eos ID] [--greedy]
      Teacher-forces lorad's ids through the reference and compares every logits row
      (max|a-b| / max|b| within float32_bound.float32_logits_bound). With --greedy it also decodes greedily on its own from the
      prompt and requires the same ids, and checks that generation stopped where it should: at
      --eos or after --max-tokens. Exit 0 ok, 1 mismatch.
  generate_ref.py make-adapter BASE OUT_DIR [--r R --alpha A --rslora --amplitude X --seed S
                  --targets q_proj,v_proj,...]
      Writes a PEFT adapter (F32) for BASE with A and B uniform in [-X, X] (both non-zero, so the
      delta changes the output; default X 0.2).
  generate_ref.py greedy BASE --prompt-ids 1,2,3 --max-tokens N [--adapter DIR] [--eos ID]
      Prints the reference's greedy continuation (ids, space separated).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
from float32_bound import float32_logits_bound  # noqa: E402
from llama_lora_ref import LlamaLora, LoraConfig, ModelConfig  # noqa: E402
from peft_merge_ref import PREFIX, as_f64, load_adapter, load_base, shapes, write_safetensors  # noqa: E402



def load_model(base, adapter):
    """(LlamaLora in float64, lora dict) for base with the adapter dir (or none)."""
    hf, tensors = load_base(base)
    cfg = ModelConfig(hf)
    weights = {name: torch.from_numpy(as_f64(dtype, a)) for name, (dtype, a) in tensors.items()}
    if adapter:
        conf, lora_np, _ = load_adapter(adapter)
        lcfg = LoraConfig({"r": conf["r"], "alpha": conf["lora_alpha"], "use_rslora": conf.get("use_rslora", False),
                           "use_dora": conf.get("use_dora", False),
                           "target_modules": sorted({n.split(".lora_")[0].split(".")[-1] for n in lora_np})})
        lora = {n: torch.from_numpy(a.astype(np.float64)) for n, a in lora_np.items()}
    else:
        lcfg = LoraConfig({"r": 1, "alpha": 1, "target_modules": ["q_proj"]})
        lora = {}
    linears = [n for n in tensors if n.endswith("_proj.weight")]
    head = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    kv_bf16 = all(tensors[n][0] == "BF16" for n in linears + [head])
    return LlamaLora(cfg, lcfg, weights, kv_bf16=kv_bf16), lora, cfg


def next_logits(model, lora, ids):
    """float64 (len(ids), V): logits at every position of ids, the whole sequence recomputed."""
    with torch.no_grad():
        return model.logits(lora, torch.tensor([ids], dtype=torch.int64))[0]


def greedy(model, lora, prompt, max_tokens, eos, tol):
    """The reference's own greedy decoding: (ids, logits rows, near-tie flags per step). A step is
    a near tie when the best logit beats the runner-up by no more than twice the float32 error
    bound tol (relative to the row's largest magnitude): then float32 may pick either."""
    ids, rows, ties = list(prompt), [], []
    for _ in range(max_tokens):
        z = next_logits(model, lora, ids)[-1]
        top2 = torch.topk(z, 2).values
        ties.append(float(top2[0] - top2[1]) <= 2 * tol * float(z.abs().max()))
        rows.append(z)
        ids.append(int(torch.argmax(z)))
        if ids[-1] in eos:
            break
    return ids[len(prompt):], rows, ties


def rel_err(got, ref):
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def cmd_check(a):
    model, lora, cfg = load_model(a.base, a.adapter)
    tensors, meta = safetensors_io.read(a.dump)
    for key in ("logits", "prompt_ids", "generated_ids"):
        if key not in tensors:
            print(f"FAIL: {a.dump} lacks {key}")
            return 1
    if meta.get("format") != "lorad-generate-logits-v1":
        print(f"FAIL: {a.dump}: format {meta.get('format')!r}")
        return 1
    prompt = [int(x) for x in tensors["prompt_ids"]]
    gen = [int(x) for x in tensors["generated_ids"]]
    got = torch.from_numpy(tensors["logits"].astype(np.float64))
    if got.shape != (len(gen), cfg.vocab):
        print(f"FAIL: logits shape {tuple(got.shape)}, want ({len(gen)}, {cfg.vocab})")
        return 1
    # Teacher forcing: one forward over prompt + generated[:-1] gives every row at once.
    ref = next_logits(model, lora, prompt + gen[:-1])[len(prompt) - 1:]
    worst = max(range(len(gen)), key=lambda i: rel_err(got[i], ref[i]))
    err = rel_err(got[worst], ref[worst])
    tol = float32_logits_bound(cfg, a.max_tokens + len(prompt))
    print(f"{a.dump}: {len(gen)} rows, worst logits error {err:.2e} at row {worst} (tolerance {tol:.2e})")
    if not err <= tol:
        print(f"FAIL: logits row {worst} differs from the reference by {err:.3e} > {tol:.3e}")
        return 1
    if not a.greedy:
        return 0
    eos = set(a.eos)
    want, _, ties = greedy(model, lora, prompt, a.max_tokens, eos, tol)
    n_cmp = min(len(want), len(gen))
    for i in range(n_cmp):
        if want[i] != gen[i]:
            if ties[i]:
                print(f"note: step {i} of {n_cmp} is a near tie ({want[i]} vs {gen[i]}); not comparing further")
                return 0
            print(f"FAIL: greedy step {i}: lorad picked {gen[i]}, the reference {want[i]}\n"
                  f"  lorad     {gen}\n  reference {want}")
            return 1
    if len(want) != len(gen):
        print(f"FAIL: lorad generated {len(gen)} tokens, the reference {len(want)} (eos {sorted(eos)}, "
              f"max {a.max_tokens})\n  lorad     {gen}\n  reference {want}")
        return 1
    stop = "eos" if gen[-1] in eos else "max_tokens"
    if meta.get("stop") != stop:
        print(f"FAIL: metadata stop {meta.get('stop')!r}, want {stop!r}")
        return 1
    print(f"greedy: {len(gen)} ids equal to the reference's ({stop})")
    return 0


def cmd_greedy(a):
    model, lora, _ = load_model(a.base, a.adapter)
    prompt = [int(x) for x in a.prompt_ids.split(",")]
    ids, _, _ = greedy(model, lora, prompt, a.max_tokens, set(a.eos), 0.0)
    print(" ".join(map(str, ids)))
    return 0


def cmd_make_adapter(a):
    hf, _ = load_base(a.base)
    targets = a.targets.split(",")
    rng = np.random.default_rng(a.seed)
    t = {}
    for module, (n_in, n_out) in shapes(hf).items():  # (in, out) per module
        if module.split(".")[-1] not in targets:
            continue
        t[PREFIX + module + ".lora_A.weight"] = rng.uniform(-a.amplitude, a.amplitude, (a.r, n_in)).astype(np.float32)
        t[PREFIX + module + ".lora_B.weight"] = rng.uniform(-a.amplitude, a.amplitude, (n_out, a.r)).astype(np.float32)
    if not t:
        print(f"no module matches --targets {a.targets}")
        return 2
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "adapter_model.safetensors"), t)
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.r, "lora_alpha": a.alpha, "lora_dropout": 0.0,
            "use_rslora": a.rslora, "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": a.base,
            "target_modules": targets}
    with open(os.path.join(a.out, "adapter_config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check")
    p.add_argument("base")
    p.add_argument("dump")
    p.add_argument("--adapter")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--eos", type=int, action="append", default=[])
    p.add_argument("--greedy", action="store_true")
    p = sub.add_parser("greedy")
    p.add_argument("base")
    p.add_argument("--prompt-ids", required=True)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--adapter")
    p.add_argument("--eos", type=int, action="append", default=[])
    p = sub.add_parser("make-adapter")
    p.add_argument("base")
    p.add_argument("out")
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8)
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--amplitude", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    return {"check": cmd_check, "greedy": cmd_greedy, "make-adapter": cmd_make_adapter}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
