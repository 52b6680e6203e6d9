#!/usr/bin/python3
"""Time one LoRA training step of a Llama model in float32 eager PyTorch (the baseline lorad is
measured against). Forward, backward and torch.optim.AdamW on the LoRA tensors only; the base
weights are random and frozen (requires_grad=False). The model is the one of
tests/reference/llama_lora_ref.py run in float32. --ckpt recomputes each decoder layer in the
backward pass (torch.utils.checkpoint, as torchtune's enable_activation_checkpointing does);
--autocast runs the step under CPU bfloat16 autocast (torch.autocast("cpu", torch.bfloat16): the
products in bf16, the weights kept in float32), PyTorch's own mixed-precision path on CPU.

Prints one JSON line: {"tokens_per_s", "step_s", "peak_rss_bytes", "threads", ...}.
step_s is the mean over --steps timed steps after --warmup untimed ones.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.utils.checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import llama_lora_ref as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=288)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", choices=("qv", "all"), default="qv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt", action="store_true", help="activation checkpointing per decoder layer")
    ap.add_argument("--autocast", action="store_true", help="CPU bfloat16 autocast")
    args = ap.parse_args()
    if args.dim % args.heads:
        ap.error("--dim must be a multiple of --heads")

    torch.set_num_threads(args.threads)
    hf = {"vocab_size": args.vocab, "hidden_size": args.dim, "intermediate_size": args.hidden,
          "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
          "num_key_value_heads": args.kv_heads or args.heads, "head_dim": args.dim // args.heads,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
          "tie_word_embeddings": False, "attention_bias": False, "max_position_embeddings": args.seq}
    targets = ["q_proj", "v_proj"] if args.targets == "qv" else list(ref.ALL_TARGETS)
    cfg = ref.ModelConfig(hf)
    lcfg = ref.LoraConfig({"r": args.r, "alpha": 2.0 * args.r, "dropout": 0.0, "target_modules": targets})
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        base, lora = ref.random_weights(cfg, lcfg, gen, dtype=torch.float32)
    for t in base.values():
        t.requires_grad_(False)
    for t in lora.values():
        t.requires_grad_(True)
    model = ref.LlamaLora(cfg, lcfg, base)
    opt = torch.optim.AdamW(list(lora.values()), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, args.vocab, (1, args.batch, args.seq), generator=gen)
    labels = torch.randint(0, args.vocab, (1, args.batch, args.seq), generator=gen)

    run_layer = None
    if args.ckpt:
        def run_layer(fn, *layer_args):
            return torch.utils.checkpoint.checkpoint(fn, *layer_args, use_reentrant=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            loss = model.step_loss(lora, ids, labels, run_layer=run_layer)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    step_s = (time.perf_counter() - start) / max(args.steps, 1)
    if not math.isfinite(loss):
        print(f"error: non-finite loss {loss}", file=sys.stderr)
        return 1
    print(json.dumps({"tokens_per_s": args.batch * args.seq / step_s, "step_s": step_s,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "threads": args.threads, "torch": torch.__version__, "loss": loss,
                      "ckpt": args.ckpt, "autocast": args.autocast}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
