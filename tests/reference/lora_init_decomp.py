#!/usr/bin/python3
"""Our PyTorch reference for the data-driven LoRA initialisations PiSSA and OLoRA, written from their
definitions (PEFT's init_lora_weights="pissa" / "olora"), in float64.

    lora_init_decomp.py compare CASE   exit 0 all within tolerance, 1 mismatch, 2 malformed input
    lora_init_decomp.py selftest       verify this reference and its tolerances

For a base weight W (out, in), rank r and scale s (alpha / r, or alpha / sqrt(r) with rsLoRA):
  PiSSA: W = V diag(S) U^T (thin SVD, S descending); A = diag(sqrt(S[:r] / s)) U^T[:r] (r, in),
         B = V[:, :r] diag(sqrt(S[:r] / s)) (out, r); so B A = V_r diag(S_r) U_r^T / s.
  OLoRA: W = Q R (thin QR); B = Q[:, :r] (out, r), A = R[:r] (r, in); s does not enter A, B.
  Both:  residual = W - s B A, the base the model then trains on.

CASE is a safetensors file with, for each case i, F32 tensors case<i>.W (out, in), case<i>.A
(r, in), case<i>.B (out, r) and case<i>.residual (out, in) (the engine's results), and the
__metadata__ entry "cases": a JSON list of {"method": "pissa"|"olora", "r": r, "scale": s}.

Only quantities that do not depend on the factorisations' sign conventions are compared (a
singular pair, or a column of Q with the row of R, may flip sign): the product P = B A, the
residual, the Gram matrices A A^T and B^T B, and for OLoRA the zero pattern and |diag| of R[:r].

Tolerances (u = 2^-24 the float32 unit roundoff, e = 2^-53 the float64 one). The engine factorises
in float64 with backward-stable LAPACK routines and rounds each element of A and B once to float32,
so A32 = A64 (1 + d) elementwise with |d| <= u. Hence, elementwise and rigorously,
    |B32 A32 - B64 A64| <= (2u + u^2) (|B| |A|)
(|B| |A| the product of the elementwise absolute values; it is bounded by |B_i| |A^j| through
Cauchy-Schwarz, within a factor sqrt(r) of |P| itself). The float64 stages, in the engine and here,
are exact for a W perturbed by E, ||E|| <= c (out + in) e ||W||_F, which moves P by at most
||E|| (1 + 2 sigma_1 / (sigma_r - sigma_r+1)) (PiSSA: truncated SVD, Wedin) or ||E|| (1 + 2 kappa_r)
(OLoRA: P is the projection of W on the span of its first r columns, kappa_r their condition
number); with c = 10 that is the term f64, some 1e-12 of ||W||: it only matters for a near-singular
case, which is refused (above a tenth of 2u max|P_ref|) rather than allowed to loosen the test. So
    |P - P_ref| <= 1.01 (2u + u^2 + r e) (|B| |A|) + 2 f64                              (product)
    |res - (W - s P)| <= 1.01 u |res| + (r + 2) e (|W| + s |B| |A|)                       (residual op)
    |res - (W - s P_ref)| <= s * (product bound) + 1.01 u |res| + (r + 2) e (|W| + s |B| |A|)
    |(A A^T)_jl - diag(S_r / s)_jl| <= 1.01 (2u + u^2 + in e) |A_j| |A_l| + f64_j    (PiSSA grams)
    |(B^T B)_jl - I_jl| <= 1.01 (2u + u^2 + out e) |B^j| |B^l| + c out e                (OLoRA)
None is tuned to a kernel's rounding: each is the worst case of the float32 rounding of the
outputs. A wrong formula (no 1/s, a wrong or shifted rank, W transposed, the smallest singular
values, R without its scale, a residual without s) moves them by O(1) of their scale; the selftest
checks that such results fail and that sign flips pass.
"""

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

U32 = 2.0 ** -24
E64 = 2.0 ** -53
C64 = 10.0  # the backward-error constant of the float64 factorisations (see the docstring)


class Checker:
    def __init__(self, verbose=True):
        self.failures = 0
        self.verbose = verbose

    def check(self, what, err, bound):
        """err and bound: float64 tensors of one shape; passes when err <= bound everywhere."""
        err = torch.as_tensor(err, dtype=torch.float64)
        bound = torch.as_tensor(bound, dtype=torch.float64)
        bad = ~(err <= bound)  # NaN fails
        ratio = float((err / bound.clamp_min(1e-300)).max()) if err.numel() else 0.0
        if bool(bad.any()):
            self.failures += 1
            idx = tuple(int(i) for i in bad.nonzero()[0])
            if self.verbose:
                print(f"FAIL {what}: at {idx} error {float(err[idx]):.3e} > bound {float(bound[idx]):.3e} "
                      f"(max error/bound {ratio:.3g})")
            return False
        if self.verbose:
            print(f"ok   {what}: max error/bound {ratio:.3g}")
        return True

    def require(self, what, cond, detail=""):
        if not cond:
            self.failures += 1
            if self.verbose:
                print(f"FAIL {what} {detail}")
        return cond


def reference(method, W, r, s):
    """(P_ref = B A in float64, what the tolerances need) from the definitions."""
    out, inn = W.shape
    normW = float(torch.linalg.norm(W))
    if method == "pissa":
        V, S, Uh = torch.linalg.svd(W, full_matrices=False)
        P = V[:, :r] @ torch.diag(S[:r] / s) @ Uh[:r]
        gap = float(S[r - 1] - S[r]) if r < S.numel() else math.inf
        f64 = C64 * (out + inn) * E64 * normW * (1.0 + 2.0 * float(S[0]) / gap) / s
        return P, {"S": S, "f64": f64, "gap": gap}
    Q, R = torch.linalg.qr(W, mode="reduced")
    P = Q[:, :r] @ R[:r]
    sv = torch.linalg.svdvals(W[:, :r])
    kappa = float(sv[0] / sv[-1])
    f64 = C64 * (out + inn) * E64 * normW * (1.0 + 2.0 * kappa)
    return P, {"R": R, "f64": f64, "kappa": kappa}


def check_case(ck, tag, method, W32, A32, B32, res32, r, s):
    """Compares one case; W32, A32, B32, res32 float32 numpy arrays."""
    W = torch.from_numpy(np.asarray(W32, dtype=np.float64))
    out, inn = W.shape
    if not ck.require(f"{tag} shapes", tuple(A32.shape) == (r, inn) and tuple(B32.shape) == (out, r)
                      and tuple(res32.shape) == (out, inn),
                      f"A {tuple(A32.shape)} (want ({r}, {inn})), B {tuple(B32.shape)} (want ({out}, {r})), "
                      f"residual {tuple(res32.shape)}"):
        return
    A = torch.from_numpy(np.asarray(A32, dtype=np.float64))
    B = torch.from_numpy(np.asarray(B32, dtype=np.float64))
    res = torch.from_numpy(np.asarray(res32, dtype=np.float64))
    P_ref, info = reference(method, W, r, s)
    absBA = B.abs() @ A.abs()
    # A near-singular case would let the float64 term swamp the float32 one: refuse it.
    f32_scale = 2 * U32 * float(P_ref.abs().max())
    if not ck.require(f"{tag} well-posed", info["f64"] < 0.1 * f32_scale,
                      f"(float64 term {info['f64']:.3e} vs float32 scale {f32_scale:.3e}: gap or conditioning "
                      f"too small for a meaningful test)"):
        return
    P = B @ A
    prod_bound = 1.01 * (2 * U32 + U32 ** 2 + r * E64) * absBA + 2 * info["f64"]
    ck.check(f"{tag} B@A vs the reference", (P - P_ref).abs(), prod_bound)
    op_tiny = (r + 2) * E64 * (W.abs() + s * absBA)
    ck.check(f"{tag} residual vs W - s B@A of its own factors", (res - (W - s * P)).abs(),
             1.01 * U32 * res.abs() + op_tiny)
    ck.check(f"{tag} residual vs W - s B@A of the reference", (res - (W - s * P_ref)).abs(),
             s * prod_bound + 1.01 * U32 * res.abs() + op_tiny)
    if method == "pissa":
        S = info["S"]
        rowA, colB = A.norm(dim=1), B.norm(dim=0)
        want = torch.diag(S[:r] / s)
        f64_gram = C64 * (out + inn) * E64 * float(torch.linalg.norm(W)) / s  # Weyl, and orthogonality loss
        ck.check(f"{tag} A A^T = diag(S_r / s)", (A @ A.T - want).abs(),
                 1.01 * (2 * U32 + U32 ** 2 + inn * E64) * torch.outer(rowA, rowA) + f64_gram)
        ck.check(f"{tag} B^T B = diag(S_r / s)", (B.T @ B - want).abs(),
                 1.01 * (2 * U32 + U32 ** 2 + out * E64) * torch.outer(colB, colB) + f64_gram)
    else:
        R = info["R"]
        colB = B.norm(dim=0)
        ck.check(f"{tag} B^T B = I", (B.T @ B - torch.eye(r, dtype=torch.float64)).abs(),
                 1.01 * (2 * U32 + U32 ** 2 + out * E64) * torch.outer(colB, colB) + C64 * out * E64)
        below = torch.tril(torch.ones(r, inn, dtype=torch.bool), diagonal=-1)
        ck.require(f"{tag} A = R[:r] is upper trapezoidal", bool((A[below] == 0).all()),
                   f"(max |A| below the diagonal {float(A[below].abs().max()) if below.any() else 0.0:.3e})")
        d, dref = A.diagonal().abs(), R[:r].diagonal().abs()
        ck.check(f"{tag} |diag A| = |diag R[:r]|", (d - dref).abs(), 1.01 * U32 * d + 2 * info["f64"])


def cmd_compare(path):
    try:
        tensors, meta = safetensors_io.read(path)
        cases = json.loads(meta["cases"])
        items = []
        for i, c in enumerate(cases):
            method, r, s = c["method"], int(c["r"]), float(c["scale"])
            if method not in ("pissa", "olora"):
                raise ValueError(f"case {i}: unknown method {method!r}")
            items.append((i, method, r, s, [tensors[f"case{i}.{n}"] for n in ("W", "A", "B", "residual")]))
    except (safetensors_io.SafetensorsError, KeyError, ValueError, TypeError) as e:
        print(f"{path}: malformed case: {e!r}")
        return 2
    ck = Checker()
    for i, method, r, s, (W, A, B, res) in items:
        tag = f"case{i} {method} W {tuple(W.shape)} r={r} s={s:g}"
        check_case(ck, tag, method, W, A, B, res, r, s)
    print(f"{len(items)} case(s), {ck.failures} failure(s)")
    return 0 if ck.failures == 0 else 1


# ---------------------------------------------------------------------------------------------
# selftest: correct float32 results (from float64, as the engine does) pass, with random sign
# flips; each mutant of the formula fails.

def make_w(out, inn, seed):
    g = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(out, inn, generator=g, dtype=torch.float64)).float()


def results(method, W32, r, s, mutant=None, seed=0):
    """Float32 (A, B, residual) as the engine must produce them, optionally wrong per `mutant`."""
    W = W32.double()
    if mutant == "transposed":  # the factors of W^T, not turned back (square W: the shapes still fit)
        W = W.T
    g = torch.Generator().manual_seed(seed + 1)
    if method == "pissa":
        V, S, Uh = torch.linalg.svd(W, full_matrices=False)
        idx = torch.arange(r)
        if mutant == "shifted_rank":
            idx = idx + 1
        elif mutant == "smallest":
            idx = torch.arange(S.numel() - r, S.numel())
        Sr = S[idx] if mutant == "no_div_scale" else S[idx] / s
        if mutant == "sqrt_scale":
            Sr = S[idx] / math.sqrt(s)
        Vr, Uhr = V[:, idx], Uh[idx]
        if mutant == "rank_minus_one":
            Sr = Sr.clone()
            Sr[-1] = 0
        signs = torch.where(torch.rand(r, generator=g) < 0.5, -1.0, 1.0).double()
        A = torch.diag(Sr.sqrt() * signs) @ Uhr
        B = Vr @ torch.diag(Sr.sqrt() * signs)
    else:
        Q, R = torch.linalg.qr(W, mode="reduced")
        B, A = Q[:, :r], R[:r]
        if mutant == "rank_minus_one":
            A = A.clone()
            A[-1] = 0
        elif mutant == "scaled":
            A = A / s
        signs = torch.where(torch.rand(r, generator=g) < 0.5, -1.0, 1.0).double()
        B, A = B * signs, signs[:, None] * A
    A32, B32 = A.float(), B.float()
    s_res = 1.0 if mutant == "residual_no_scale" else s
    res = (W32.double() - s_res * (B32.double() @ A32.double())).float()
    return A32.numpy(), B32.numpy(), res.numpy()


def selftest():
    start = time.time()
    ck = Checker(verbose=False)
    shapes = [(48, 32, 8, 2.0), (24, 64, 4, 6.0), (40, 40, 40, 0.5), (32, 32, 8, 2.0), (64, 16, 1, 16.0),
              (96, 80, 16, 2.0)]
    mutants = {"pissa": ["no_div_scale", "sqrt_scale", "shifted_rank", "rank_minus_one", "smallest", "transposed",
                         "residual_no_scale"],
               "olora": ["rank_minus_one", "scaled", "transposed", "residual_no_scale"]}
    failures = 0
    for method in ("pissa", "olora"):
        for n, (out, inn, r, s) in enumerate(shapes):
            W32 = make_w(out, inn, 10 * n + (method == "olora"))
            before = ck.failures
            check_case(ck, f"{method} {out}x{inn} r={r}", method, W32.numpy(), *results(method, W32, r, s, seed=n),
                       r, s)
            if ck.failures != before:
                print(f"selftest FAIL: correct {method} results {out}x{inn} r={r} s={s} rejected")
                failures += 1
                ck.verbose = True
                check_case(ck, "(again)", method, W32.numpy(), *results(method, W32, r, s, seed=n), r, s)
                ck.verbose = False
            for mut in mutants[method]:
                if mut == "transposed" and out != inn:
                    continue  # the shapes would not fit: the engine's test checks them
                if mut in ("smallest",) and r == min(out, inn):
                    continue  # the full rank has no smaller values to take
                if mut == "no_div_scale" and s == 1.0:
                    continue
                if mut == "shifted_rank" and r == min(out, inn):
                    continue
                before = ck.failures
                check_case(ck, mut, method, W32.numpy(), *results(method, W32, r, s, mutant=mut, seed=n), r, s)
                if ck.failures == before:
                    print(f"selftest FAIL: mutant {mut} of {method} {out}x{inn} r={r} s={s} passed")
                    failures += 1
    print(f"selftest: {failures} failure(s) in {time.time() - start:.1f} s")
    return 0 if failures == 0 else 1


def main(argv):
    if len(argv) == 2 and argv[0] == "compare":
        return cmd_compare(argv[1])
    if argv == ["selftest"]:
        return selftest()
    print(__doc__.split("\n\n")[1])
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
