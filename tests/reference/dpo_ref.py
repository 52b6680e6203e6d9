#!/usr/bin/python3
"""Our PyTorch reference for the DPO loss, written from the paper's formula (Rafailov et al.,
"Direct Preference Optimization: Your Language Model is Secretly a Reward Model", 2023, eq. 7).

    dpo_ref.py compare CASE RESULT   exit 0 all within tolerance, 1 mismatch, 2 malformed input
    dpo_ref.py selftest              verify this reference and its tolerances

The case is llama_lora_ref.py's (docs/reference-interchange.md) with `train.steps` = 0 and one more
__metadata__ entry, `dpo`: {"beta": b}. In every micro-batch (M, B, T) rows 2i and 2i+1 are a
pair: the prompt followed by the preferred and by the non-preferred output, labels -100 except on
the outputs. With log pi(x) = -(sum of the row's token cross-entropies) under the LoRA adapter and
log ref(x) the same for the base model (the adapter left out), over all pairs of all M
micro-batches:
    L = mean_i -log sigmoid(beta * ((log pi(c_i) - log ref(c_i)) - (log pi(r_i) - log ref(r_i))))
The reference is a constant (computed without gradients); the gradients are those of L with
respect to the LoRA tensors, by autograd in float64.

Result tensors (F32): `loss` (1), `grad.<lora name>` for every LoRA tensor, and the metrics
`rewards_margin`, `rewards_chosen`, `rewards_rejected`, `rewards_accuracy` (1 each): the means
over the pairs of beta((pi_c - ref_c) - (pi_r - ref_r)), beta(pi_c - ref_c), beta(pi_r - ref_r) and
of [margin > 0].

Tolerances, derived per case from the float32 error bound eps of llama_lora_ref.py
(float32_bound: a row's CE sum and a LoRA gradient of one CE sum are good to eps of their scale):
  * each of a pair's four CE sums errs by at most eps |CE|, so its margin by
    dz = beta * eps * (|CE_pi(c)| + |CE_ref(c)| + |CE_pi(r)| + |CE_ref(r)|), and by the mean value
    theorem its loss by dz times the largest slope of -log sigmoid on [z - dz, z + dz], which is
    sigmoid(-(z - dz)); the rewards by their share of dz;
  * the gradient is sum_rows w_row grad CE_row with w = +-beta sigmoid(-z) / P. Each row's term is
    good to eps of its own scale |w_row| max|grad CE_row| (the chosen and rejected rows share their
    prompt, so the terms cancel in part and the sum may be smaller than they are), and each
    weight errs by at most beta dz s / P, s the largest slope of sigmoid on [z - dz, z + dz]
    (sigmoid(x) sigmoid(-x) at the point of the interval nearest 0), so a tensor's error is at
    most sum_rows (eps |w_row| + beta dz_row s_row / P) max|grad CE_row|, and its tolerance that
    divided by max|G| (the compared scale);
  * the accuracy is compared exactly where no margin lies within its dz of 0.
An error in the formula (no reference, a missing sigmoid, swapped outputs, a wrong beta) moves
these by O(1) of their scale; the selftest checks that such results fail.
"""

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_lora_ref as ref  # noqa: E402
import safetensors_io  # noqa: E402
from float32_bound import float32_bound  # noqa: E402

METRICS = ("rewards_margin", "rewards_chosen", "rewards_rejected", "rewards_accuracy")


def load_dpo_case(path):
    c = ref.load_case(path)
    _, meta = safetensors_io.read(path)
    try:
        d = json.loads(meta["dpo"])
        c.beta = float(d["beta"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ref.CaseError(f"{path}: __metadata__ 'dpo' must be {{\"beta\": number}} ({e})") from e
    if not c.beta > 0:
        raise ref.CaseError(f"{path}: beta must be > 0, got {c.beta}")
    if c.tc.steps != 0:
        raise ref.CaseError(f"{path}: a DPO case holds one step: train.steps must be 0")
    if c.input_ids.shape[1] % 2:
        raise ref.CaseError(f"{path}: B = {c.input_ids.shape[1]} rows is not a whole number of pairs")
    return c


def row_ce(model, lora, ids, labels):
    """(B,) sums of token cross-entropy over each row's unmasked labels."""
    logits = model.logits(lora, ids)
    ce = F.cross_entropy(logits.reshape(-1, model.cfg.vocab), labels.reshape(-1), ignore_index=ref.IGNORE_INDEX,
                         reduction="none")
    return ce.view(ids.shape).sum(dim=1)


def dpo_result(c, mutant=None, dtype=torch.float64):
    """The result tensors (float64 numpy) and what the tolerances need. mutant, for the selftest,
    computes a wrong formula: "no_ref", "no_sigmoid_grad", "swapped", "beta_twice"."""
    base = {n: t.to(dtype) for n, t in c.base.items()}
    model = ref.LlamaLora(c.cfg, c.lcfg, base)
    lora = {n: t.to(dtype).clone().requires_grad_(True) for n, t in c.lora_init.items()}
    beta = c.beta * (2 if mutant == "beta_twice" else 1)
    policy, reference = [], []
    for mb in range(c.input_ids.shape[0]):
        policy.append(row_ce(model, lora, c.input_ids[mb], c.labels[mb]))
        with torch.no_grad():
            reference.append(row_ce(model, {}, c.input_ids[mb], c.labels[mb]))
    pi = -torch.cat(policy)                 # log pi(row), (M*B,)
    rf = -torch.cat(reference)              # log ref(row)
    if mutant == "no_ref":
        rf = torch.zeros_like(rf)
    chosen, rejected = (1, 0) if mutant == "swapped" else (0, 1)
    reward_c = beta * (pi[chosen::2] - rf[chosen::2])
    reward_r = beta * (pi[rejected::2] - rf[rejected::2])
    z = reward_c - reward_r
    loss = (-F.logsigmoid(z)).mean()
    if mutant == "no_sigmoid_grad":
        # the loss's value, but a gradient that drops sigmoid(-z): that of -mean(z) / 2
        (-(z.mean()) / 2).backward()
    else:
        loss.backward()
    out = {"loss": np.array([float(loss)])}
    for n, t in lora.items():
        out["grad." + n] = (t.grad if t.grad is not None else torch.zeros_like(t)).double().numpy().copy()
    out["rewards_margin"] = np.array([float(z.mean())])
    out["rewards_chosen"] = np.array([float(reward_c.mean())])
    out["rewards_rejected"] = np.array([float(reward_r.mean())])
    out["rewards_accuracy"] = np.array([float((z > 0).double().mean())])
    aux = {"ce_pi": (-pi).detach(), "ce_ref": (-rf).detach(), "z": z.detach()}
    return out, aux


def row_gradient_scales(c):
    """max|d CE_row / d tensor| for every row (all micro-batches, in order) and LoRA tensor."""
    model = ref.LlamaLora(c.cfg, c.lcfg, c.base)
    lora = {n: t.clone().requires_grad_(True) for n, t in c.lora_init.items()}
    names = list(lora)
    scales = []
    for mb in range(c.input_ids.shape[0]):
        ce = row_ce(model, lora, c.input_ids[mb], c.labels[mb])
        for r in range(ce.shape[0]):
            grads = torch.autograd.grad(ce[r], [lora[n] for n in names], retain_graph=True, allow_unused=True)
            scales.append({n: float(g.abs().max()) if g is not None else 0.0 for n, g in zip(names, grads)})
    return scales


def tolerances(c, expected, aux):
    """Each result tensor's tolerance (relative to its max magnitude), as the docstring derives."""
    eps = float32_bound(c.cfg, ref.step_tokens(c))
    beta, z = c.beta, aux["z"]
    P = z.shape[0]
    ce = aux["ce_pi"].abs() + aux["ce_ref"].abs()          # per row
    e_c, e_r = beta * eps * ce[0::2], beta * eps * ce[1::2]  # each reward's error bound
    dz = e_c + e_r
    sig = torch.sigmoid(-z)
    nearest0 = torch.clamp(torch.zeros_like(z), z - dz, z + dz)
    slope = torch.sigmoid(nearest0) * torch.sigmoid(-nearest0)  # sigmoid's largest slope near z
    abs_err = {"loss": float((torch.sigmoid(-(z - dz)) * dz).mean()), "rewards_margin": float(dz.mean()),
               "rewards_chosen": float(e_c.mean()), "rewards_rejected": float(e_r.mean())}
    tol = {}
    for name, err in abs_err.items():
        scale = abs(float(expected[name][0]))
        tol[name] = err / scale if scale > 0 else err
    tol["rewards_accuracy"] = 0.0 if bool((z.abs() > dz).all()) else math.inf
    scales = row_gradient_scales(c)
    w = beta * sig / P                                       # |weight| of both rows of a pair
    dw = beta * dz * slope / P
    for name in expected:
        if not name.startswith("grad."):
            continue
        t = name[len("grad."):]
        err = sum((eps * float(w[i // 2]) + float(dw[i // 2])) * scales[i][t] for i in range(2 * P))
        scale = float(np.max(np.abs(expected[name])))
        tol[name] = err / scale if scale > 0 else err
    return tol


def compare(expected, tol, got, out=sys.stdout):
    ok = True
    rows = []
    for name, want in expected.items():
        if name not in got:
            rows.append((name, "-", tol[name], "MISSING"))
            ok = False
            continue
        g = np.asarray(got[name], dtype=np.float64)
        if g.shape != want.shape:
            rows.append((name, "-", tol[name], f"SHAPE {list(g.shape)} (want {list(want.shape)})"))
            ok = False
            continue
        if math.isinf(tol[name]):
            rows.append((name, "-", tol[name], "skipped (a margin is within its error of 0)"))
            continue
        err = ref.relative_error(g, want)
        passed = err <= tol[name]
        ok &= passed
        rows.append((name, f"{err:.3e}", tol[name], "ok" if passed else "FAIL"))
    for name in sorted(set(got) - set(expected)):
        rows.append((name, "-", "-", "EXTRA (not expected)"))
        ok = False
    width = max(len(r[0]) for r in rows)
    print(f"{'tensor':<{width}}  {'rel.err':>10} {'tol':>9}  status", file=out)
    for name, err, t, status in rows:
        t_text = t if isinstance(t, str) else f"{t:.3g}"
        print(f"{name:<{width}}  {err:>10} {t_text:>9}  {status}", file=out)
    print("PASS" if ok else "FAIL", file=out)
    return ok


def cmd_compare(case_path, result_path, out=sys.stdout):
    try:
        c = load_dpo_case(case_path)
        got = ref.load_result(result_path)
        expected, aux = dpo_result(c)
        tol = tolerances(c, expected, aux)
    except ref.CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    z = aux["z"]
    print(f"{z.shape[0]} pairs, beta {c.beta}, loss {float(expected['loss'][0]):.6f}, margins in "
          f"[{float(z.min()):.4f}, {float(z.max()):.4f}]", file=out)
    return 0 if compare(expected, tol, got, out=out) else 1


# ---------------------------------------------------------------------------------------------
# Selftest


def make_dpo_case(path, preset, seed, beta, data_shape):
    ref.make_case(path, preset, seed, data_shape=data_shape)
    tensors, meta = safetensors_io.read(path)
    meta["dpo"] = json.dumps({"beta": beta})
    safetensors_io.write(path, tensors, meta)


def selftest():
    ck = ref.Checker()
    start = time.time()
    sink = open(os.devnull, "w")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, beta in (("tiny-gqa", 0.5), ("tiny-llama3", 2.0)):
            case = os.path.join(tmp, preset + ".safetensors")
            make_dpo_case(case, preset, seed=3, beta=beta, data_shape=(2, 4, 8))
            c = load_dpo_case(case)
            expected, aux = dpo_result(c)
            tol = tolerances(c, expected, aux)

            # The loss by the formula in scalars, pair by pair.
            pi, rf = -aux["ce_pi"], -aux["ce_ref"]
            hand = 0.0
            for i in range(pi.shape[0] // 2):
                zi = beta * ((float(pi[2 * i]) - float(rf[2 * i])) - (float(pi[2 * i + 1]) - float(rf[2 * i + 1])))
                hand += math.log(1 + math.exp(-zi))
            hand /= pi.shape[0] // 2
            ck.check(f"{preset}: loss = mean log(1 + exp(-z)) by hand",
                     abs(hand - float(expected["loss"][0])) < 1e-12 * abs(hand))

            # The gradient by central differences of the loss, on a few elements.
            name = sorted(n for n in c.lora_init if ".lora_B." in n)[0]
            flat = c.lora_init[name].view(-1)
            worst = 0.0
            for k in (0, flat.numel() // 2, flat.numel() - 1):
                keep, h = float(flat[k]), 1e-5
                flat[k] = keep + h
                lp = float(dpo_result(c)[0]["loss"][0])
                flat[k] = keep - h
                lm = float(dpo_result(c)[0]["loss"][0])
                flat[k] = keep
                fd = (lp - lm) / (2 * h)
                worst = max(worst, abs(fd - float(expected["grad." + name].reshape(-1)[k])))
            scale = float(np.abs(expected["grad." + name]).max())
            ck.check(f"{preset}: autograd = central differences ({name})", worst < 1e-6 * max(scale, 1e-3),
                     f"(max diff {worst:.1e})")

            # The same computation in float32 meets the tolerances: they are attainable.
            got32, _ = dpo_result(c, dtype=torch.float32)
            ck.check(f"{preset}: float32 run within tolerance", compare(expected, tol, got32, out=sink))
            worst = max(ref.relative_error(got32[n], expected[n]) / tol[n] for n in expected
                        if tol[n] > 0 and not math.isinf(tol[n]))
            print(f"     worst float32 error/tolerance {worst:.3f}; gradient tolerances "
                  f"{min(v for n, v in tol.items() if n.startswith('grad.')):.2e}.."
                  f"{max(v for n, v in tol.items() if n.startswith('grad.')):.2e}")

            # Wrong formulas fail.
            for mutant in ("no_ref", "no_sigmoid_grad", "swapped", "beta_twice"):
                bad, _ = dpo_result(c, mutant=mutant)
                ck.check(f"{preset}: mutant {mutant} fails", not compare(expected, tol, bad, out=sink))

            # Without an adapter effect (lora_B = 0) policy = reference: loss log 2, margins 0.
            zero = load_dpo_case(case)
            zero.lora_init = {n: (t * 0 if ".lora_B." in n else t) for n, t in zero.lora_init.items()}
            z_out, _ = dpo_result(zero)
            ck.check(f"{preset}: lora_B = 0 gives loss log 2 and margin 0",
                     abs(float(z_out["loss"][0]) - math.log(2)) < 1e-12 and abs(float(z_out["rewards_margin"][0])) < 1e-12)

            # The CLI round trip: the reference's own result file passes.
            res = os.path.join(tmp, preset + ".result.safetensors")
            safetensors_io.write(res, {n: a.astype(np.float32) for n, a in expected.items()})
            ck.check(f"{preset}: compare of its own float32 result passes", cmd_compare(case, res, out=sink) == 0)
    sink.close()
    print(f"selftest: {ck.failures} failure(s) in {time.time() - start:.1f} s")
    return 1 if ck.failures else 0


def main(argv):
    if len(argv) == 3 and argv[0] == "compare":
        return cmd_compare(argv[1], argv[2])
    if argv == ["selftest"]:
        return selftest()
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main(sys.argv[1:]))
