#!/usr/bin/python3
"""`lorad generate` against our PyTorch reference (tests/reference/generate_ref.py, float64, the
whole sequence recomputed for every token): the dumped logits of every generated position within
the float32 logits bound (tests/reference/float32_bound.py), and greedy ids equal to the reference's own greedy decoding, on the real
stories260K (base, PEFT adapters, a GGUF adapter), on an HF BF16 base, a GGUF base with an
adapter, and a demo HF model prompted with text; and sampled tokens drawn from the distribution
the reference computes (top-k / top-p sets, frequencies)."""
import math
import os

import numpy as np

from generate_common import (LORAD, SANITIZED, STORIES, STORIES_EOS, check, demo_model, fixtures, generate, ids_of, main,
                             read_dump, reference, run, two_float32_runs)

PROMPT = "1,203,207,288"  # ids below every test vocabulary (300 for the fixtures)


def greedy_case(d, name, base, model, max_tokens, adapter=None, adapter_ref=None, eos=(), extra=()):
    """lorad greedy with a dump, then the reference's check; returns the generated ids."""
    dump = os.path.join(d, name + ".safetensors")
    args = [model, "--prompt-ids", PROMPT, "--max-tokens", max_tokens, "--ids", "--dump-logits", dump, *extra]
    if adapter:
        args += ["--adapter", adapter]
    if not eos:
        args.append("--ignore-eos")
    p = generate(*args)
    if p.returncode != 0:
        return []
    ref = ["check", base, dump, "--max-tokens", max_tokens, "--greedy"]
    if adapter_ref or adapter:
        ref += ["--adapter", adapter_ref or adapter]
    for e in eos:
        ref += ["--eos", e]
    reference(*ref)
    return ids_of(p)


def softmax_sets(z, temperature, top_k, top_p):
    """The reference's sampling distribution (HF order: temperature, top-k, top-p) as {id: p}."""
    z = z.astype(np.float64) / temperature
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if top_k:
        order = order[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    if top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return dict(zip(order, p))


def sampling_distribution(d):
    """200 (50 under ASan) one-token draws with different seeds follow softmax(z/T) cut to the top-k: every draw
    inside the set, each frequency within 4.5 sigma of its probability. Then top-p draws stay in
    the nucleus. z comes from the dump and is itself checked against the reference."""
    dump = os.path.join(d, "dist.safetensors")
    generate(STORIES, "--prompt-ids", "1,300", "--max-tokens", 1, "--ids", "--dump-logits", dump)
    reference("check", STORIES, dump)
    z = read_dump(dump)[0]["logits"][0]
    # Each draw is a process; under ASan (its start-up is slow) fewer draws, the same bound in sigma.
    draws = (50, 20) if SANITIZED else (200, 60)
    for temperature, top_k, top_p, n in ((1.3, 6, 1.0, draws[0]), (0.9, 0, 0.6, draws[1])):
        dist = softmax_sets(z, temperature, top_k, top_p)
        counts = {}
        for seed in range(n):
            p = generate(STORIES, "--prompt-ids", "1,300", "--max-tokens", 1, "--ids", "--temperature", temperature,
                         "--top-k", top_k, "--top-p", top_p, "--seed", seed, "--threads", 1)
            t = ids_of(p)[0] if p.returncode == 0 else -1
            counts[t] = counts.get(t, 0) + 1
        outside = {t: c for t, c in counts.items() if t not in dist}
        check(not outside, f"T {temperature} top-k {top_k} top-p {top_p}: drew {outside} outside the allowed set "
                           f"{sorted(dist)}")
        for t, prob in dist.items():
            f = counts.get(t, 0) / n
            sigma = math.sqrt(prob * (1 - prob) / n)
            check(abs(f - prob) <= 4.5 * sigma + 1.0 / n,
                  f"T {temperature} top-k {top_k} top-p {top_p}: token {t} drawn {f:.3f}, probability {prob:.3f}")
        print(f"T {temperature} top-k {top_k} top-p {top_p}: {len(counts)} distinct ids over {n} draws, "
              f"allowed set {len(dist)}")


def merged_matches_adapter(d, ad, base=STORIES, name="merged", prompt=PROMPT):
    """The merged model (W + scale*B*A, exported by lorad) gives the adapter's logits: both dumps
    of a greedy run agree within two float32 runs' error bound, row by row, and the ids are equal
    token for token (the inference routes apply adapters unmerged the same way)."""
    merged = os.path.join(d, name)
    p = run([LORAD, "export", "--adapter", ad, "--format", "merged", "--out", merged, "--model", base])
    if not check(p.returncode == 0, f"lorad export merged: {p.stderr}"):
        return
    dumps = {}
    for kind, args in (("with_adapter", [base, "--adapter", ad]), ("merged", [merged])):
        dumps[kind] = os.path.join(d, f"cmp_{name}_{kind}.safetensors")
        generate(*args, "--prompt-ids", prompt, "--max-tokens", 32, "--ids", "--ignore-eos",
                 "--dump-logits", dumps[kind])
    a, b = (read_dump(dumps[k])[0] for k in ("with_adapter", "merged"))
    check(list(a["generated_ids"]) == list(b["generated_ids"]), "the merged model generated other ids than base+adapter")
    rows = min(len(a["logits"]), len(b["logits"]))
    check(rows == 32, f"expected 32 logits rows, got {rows}")
    worst = max(float(np.abs(a["logits"][i] - b["logits"][i]).max() / np.abs(a["logits"][i]).max())
                for i in range(rows))
    tol = two_float32_runs(base, len(prompt.split(",")) + 32)
    check(worst <= tol, f"{name}: merged vs adapter logits: max relative difference {worst:.2e} > {tol:.2e}")
    print(f"{name}: merged model vs base+adapter: {rows} rows, max relative logits difference {worst:.1e}")


def test(d):
    # stories260K, base and adapters. EOS is live here (the model's own end token).
    base_ids = greedy_case(d, "base", STORIES, STORIES, 64, eos=(STORIES_EOS,))
    ad = os.path.join(d, "ad_all")
    reference("make-adapter", STORIES, ad, "--seed", 3)
    ad_ids = greedy_case(d, "ad_all", STORIES, STORIES, 64, adapter=ad, eos=(STORIES_EOS,))
    check(ad_ids != base_ids, "the adapter did not change the greedy continuation")
    ad_qv = os.path.join(d, "ad_qv")
    reference("make-adapter", STORIES, ad_qv, "--seed", 4, "--targets", "q_proj,v_proj", "--rslora", "--r", 8,
              "--alpha", 4, "--amplitude", 0.3)
    greedy_case(d, "ad_qv", STORIES, STORIES, 48, adapter=ad_qv, eos=(STORIES_EOS,))
    merged_matches_adapter(d, ad)
    gguf = os.path.join(d, "ad_all.gguf")
    p = run([LORAD, "export", "--adapter", ad, "--format", "gguf", "--out", gguf, "--model", STORIES])
    check(p.returncode == 0, f"lorad export gguf: {p.stderr}")
    gguf_ids = greedy_case(d, "ad_gguf", STORIES, STORIES, 64, adapter=gguf, adapter_ref=ad, eos=(STORIES_EOS,))
    check(gguf_ids == ad_ids, "the GGUF adapter generated other ids than the same adapter as PEFT")
    # Sampling with the real model reaches EOS: the dump's rows still match, and the run stopped there.
    for seed in range(1, 40):
        dump = os.path.join(d, "eos.safetensors")
        p = generate(STORIES, "--prompt-ids", "1", "--max-tokens", 200, "--ids", "--temperature", 1, "--seed", seed,
                     "--dump-logits", dump)
        ids = ids_of(p)
        if ids and ids[-1] == STORIES_EOS:
            t, meta = read_dump(dump)
            check(list(t["generated_ids"]) == ids, "the dump's generated_ids differ from the printed ids")
            check(STORIES_EOS not in ids[:-1] and meta.get("stop") == "eos", f"seed {seed}: {ids}, stop {meta}")
            reference("check", STORIES, dump)
            break
    else:
        check(False, "no seed in 1..39 reached EOS within 200 sampled tokens")
    sampling_distribution(d)

    # Other formats: an HF BF16 base and a GGUF base with an adapter (the truth of the fixtures),
    # and the demo HF model prompted with text.
    fx = fixtures(d)
    greedy_case(d, "hf_bf16", os.path.join(fx, "hf_bf16"), os.path.join(fx, "hf_bf16"), 24)
    fad = os.path.join(d, "fad")
    reference("make-adapter", os.path.join(fx, "hf_f32"), fad, "--seed", 9, "--amplitude", 0.1)
    greedy_case(d, "gguf_ad", fx, os.path.join(fx, "gguf_f32.gguf"), 24, adapter=fad)
    demo = demo_model(d)
    dump = os.path.join(d, "demo.safetensors")
    generate(demo, "--prompt", "Once upon a time", "--max-tokens", 24, "--ignore-eos", "--dump-logits", dump)
    reference("check", demo, dump, "--max-tokens", 24, "--greedy")
    demo_ad = os.path.join(d, "demo_ad")
    reference("make-adapter", demo, demo_ad, "--seed", 11, "--r", 16, "--alpha", 32, "--amplitude", 0.1,
              "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head")
    merged_matches_adapter(d, demo_ad, base=demo, name="merged_demo", prompt="1,84,101,108,108")


if __name__ == "__main__":
    main(test)
