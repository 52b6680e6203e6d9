#!/usr/bin/python3
"""Our own PyTorch reference for a Hugging Face LlamaForCausalLM with LoRA, written from the maths.

Contract: docs/reference-interchange.md. The C engine and this script meet only through
safetensors files; neither reads the other's code.

    llama_lora_ref.py compare CASE RESULT   exit 0 all within tolerance, 1 mismatch, 2 malformed input
    llama_lora_ref.py run CASE OUT_RESULT   write the result file computed by this reference
    llama_lora_ref.py make-case OUT [--seed S --config tiny-gqa ...]   write a random case
    llama_lora_ref.py selftest              verify the reference itself (finite differences,
                                            torch.optim.AdamW, properties, compare round trip)

Readings of the contract where it leaves room (each follows torch / transformers / PEFT):
  * Relative error is max|a-b| / max|b| with b the float64 reference. When the reference tensor
    is exactly zero everywhere (e.g. grad of lora_A while lora_B == 0) the absolute error
    max|a-b| is used instead. Any non-finite value in a result is a failure.
  * `loss` and `grad.*` are compared with the float32 error bound of the case (float32_bound:
    it grows with the layers and the widest sum, so it is a property of the case, not of one
    machine's rounding); `step_loss`, `grad_norm` and `final.*` use 1e-3 (steps > 0).
  * Result tensors must have exactly the shapes of the contract: loss (1), step_loss and
    grad_norm (steps), grad./final. the shape of the LoRA tensor.
  * With steps > 0 the case must hold at least steps*grad_accum micro-batches; extra ones are
    unused (a warning is printed). With steps = 0 grad_accum is ignored: all micro-batches form
    the one step.
  * Every position attends causally to all earlier positions of its sequence (positions 0..T-1);
    padding is expressed only through -100 labels, never through an attention mask.
  * Config keys missing from the case take transformers' LlamaConfig defaults (head_dim =
    hidden/heads, num_key_value_heads = heads, rms_norm_eps 1e-6, rope_theta 10000, untied,
    no attention bias). rope_scaling may name its type "rope_type" or the older "type"; type
    "default" means no scaling; any other type, hidden_act != silu or mlp_bias is refused (exit 2).
  * Weight decay applies to every LoRA tensor (A and B), as AdamW does to all params it holds.
  * With tied embeddings a LoRA on lm_head adapts the tied projection: logits = h E^T + s*B(A h).
  * The clip condition is the doc's "norm > max_grad_norm" (torch multiplies by
    min(1, max/(norm+1e-6)), which differs only for norm within 1e-6 of the threshold).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
from float32_bound import float32_bound  # noqa: E402

IGNORE_INDEX = -100
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTN_MODULES + MLP_MODULES + ("lm_head",)
TRAIN_TOL = 1e-3


class CaseError(ValueError):
    """Malformed or unsupported input; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Configuration


class ModelConfig:
    def __init__(self, hf):
        def need(key):
            if key not in hf or hf[key] is None:
                raise CaseError(f"config: missing '{key}'")
            return hf[key]

        self.vocab = int(need("vocab_size"))
        self.dim = int(need("hidden_size"))
        self.hidden = int(need("intermediate_size"))
        self.layers = int(need("num_hidden_layers"))
        self.heads = int(need("num_attention_heads"))
        kv = hf.get("num_key_value_heads")
        self.kv_heads = int(kv) if kv is not None else self.heads
        hd = hf.get("head_dim")
        self.head_dim = int(hd) if hd is not None else self.dim // max(self.heads, 1)
        def default(key, value):
            return hf[key] if hf.get(key) is not None else value

        self.eps = float(default("rms_norm_eps", 1e-6))
        self.rope_theta = float(default("rope_theta", 10000.0))
        self.tied = bool(hf.get("tie_word_embeddings", False))
        self.attention_bias = bool(hf.get("attention_bias", False))
        self.max_pos = int(hf.get("max_position_embeddings") or 0)
        for name in ("vocab", "dim", "hidden", "layers", "heads", "kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise CaseError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise CaseError(f"config: num_attention_heads {self.heads} not a multiple of "
                            f"num_key_value_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise CaseError(f"config: head_dim {self.head_dim} must be even for RoPE")
        if hf.get("hidden_act", "silu") != "silu":
            raise CaseError(f"config: hidden_act {hf['hidden_act']!r} unsupported (only silu)")
        if hf.get("mlp_bias"):
            raise CaseError("config: mlp_bias unsupported")
        self.rope_scaling = None
        rs = hf.get("rope_scaling")
        if rs is not None and rs.get("rope_type", rs.get("type")) != "default":
            kind = rs.get("rope_type", rs.get("type"))
            if kind != "llama3":
                raise CaseError(f"config: rope_scaling type {kind!r} unsupported (only llama3)")
            try:
                self.rope_scaling = {
                    "factor": float(rs["factor"]),
                    "low_freq_factor": float(rs["low_freq_factor"]),
                    "high_freq_factor": float(rs["high_freq_factor"]),
                    "original_max_position_embeddings": float(rs["original_max_position_embeddings"]),
                }
            except KeyError as e:
                raise CaseError(f"config: rope_scaling lacks {e}") from e
            if self.rope_scaling["high_freq_factor"] == self.rope_scaling["low_freq_factor"]:
                raise CaseError("config: rope_scaling high_freq_factor == low_freq_factor")

    def module_shape(self, module):
        """(out_features, in_features) of a projection."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (q_out, self.dim), "k_proj": (kv_out, self.dim), "v_proj": (kv_out, self.dim),
            "o_proj": (self.dim, q_out), "gate_proj": (self.hidden, self.dim),
            "up_proj": (self.hidden, self.dim), "down_proj": (self.dim, self.hidden),
            "lm_head": (self.vocab, self.dim),
        }[module]

    def base_shapes(self):
        shapes = {"model.embed_tokens.weight": (self.vocab, self.dim), "model.norm.weight": (self.dim,)}
        if not self.tied:
            shapes["lm_head.weight"] = (self.vocab, self.dim)
        for i in range(self.layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (self.dim,)
            shapes[p + "post_attention_layernorm.weight"] = (self.dim,)
            for m in ATTN_MODULES:
                shapes[p + f"self_attn.{m}.weight"] = self.module_shape(m)
                if self.attention_bias and m != "o_proj":
                    shapes[p + f"self_attn.{m}.bias"] = (self.module_shape(m)[0],)
            for m in MLP_MODULES:
                shapes[p + f"mlp.{m}.weight"] = self.module_shape(m)
        return shapes


def module_prefixes(cfg, module):
    """HF prefixes of every instance of a target module."""
    if module == "lm_head":
        return ["lm_head"]
    group = "self_attn" if module in ATTN_MODULES else "mlp"
    return [f"model.layers.{i}.{group}.{module}" for i in range(cfg.layers)]


class LoraConfig:
    def __init__(self, d):
        try:
            self.r = int(d["r"])
            self.alpha = float(d["alpha"])
            self.targets = tuple(d["target_modules"])
        except (KeyError, TypeError) as e:
            raise CaseError(f"lora: missing or bad field {e}") from e
        self.dropout = float(d.get("dropout") or 0.0)
        self.use_rslora = bool(d.get("use_rslora", False))
        self.use_dora = bool(d.get("use_dora", False))
        # "pissa" / "olora": the case's adapter trains on the residual base W - scale B0 A0 of
        # every adapted weight, with B0 A0 the product of the init's factors (lora_init_decomp.py)
        self.init = d.get("init", "kaiming")
        if self.init not in ("kaiming", "gaussian", "pissa", "olora"):
            raise CaseError(f"lora: unknown init {self.init!r}")
        if self.r <= 0:
            raise CaseError(f"lora: r must be positive, got {self.r}")
        if not self.targets:
            raise CaseError("lora: target_modules is empty")
        for t in self.targets:
            if t not in ALL_TARGETS:
                raise CaseError(f"lora: unknown target module {t!r}")
        if self.dropout > 0:
            raise CaseError(f"lora: dropout {self.dropout} > 0 cannot be compared "
                            "(random masks cannot match between engines); use 0")
        self.scale = self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def shapes(self, cfg):
        """LoRA tensor name -> shape, PEFT names without the base_model.model. prefix."""
        shapes = {}
        for module in ALL_TARGETS:  # fixed order, independent of target_modules order
            if module not in self.targets:
                continue
            out_f, in_f = cfg.module_shape(module)
            for p in module_prefixes(cfg, module):
                shapes[p + ".lora_A.weight"] = (self.r, in_f)
                shapes[p + ".lora_B.weight"] = (out_f, self.r)
                if self.use_dora:
                    shapes[p + ".lora_magnitude_vector"] = (out_f,)
        return shapes


class TrainConfig:
    SCHEDULERS = ("constant", "linear", "cosine")

    def __init__(self, d):
        try:
            self.steps = int(d["steps"])
            self.grad_accum = int(d.get("grad_accum") or 1)
            self.lr = float(d.get("lr") or 0.0)
            self.warmup_steps = int(d.get("warmup_steps") or 0)
            self.scheduler = d.get("lr_scheduler") or "constant"
            self.weight_decay = float(d.get("weight_decay") or 0.0)
            self.beta1 = float(d.get("adam_beta1", 0.9))
            self.beta2 = float(d.get("adam_beta2", 0.999))
            self.eps = float(d.get("adam_epsilon", 1e-8))
            self.max_grad_norm = float(d.get("max_grad_norm") or 0.0)
        except (KeyError, TypeError, ValueError) as e:
            raise CaseError(f"train: missing or bad field {e}") from e
        if self.steps < 0 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise CaseError("train: steps >= 0, grad_accum >= 1, warmup_steps >= 0 required")
        if self.scheduler not in self.SCHEDULERS:
            raise CaseError(f"train: lr_scheduler {self.scheduler!r} not one of {self.SCHEDULERS}")


def lr_at(tc, s):
    """Learning rate of 0-based optimiser step s (docs/reference-interchange.md)."""
    if s < tc.warmup_steps:
        return tc.lr * (s + 1) / tc.warmup_steps
    if tc.scheduler == "constant":
        return tc.lr
    progress = (s - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    if tc.scheduler == "linear":
        return tc.lr * (1.0 - progress)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Model (dtype follows the tensors it is given: float64 for reference, float32 for the bench)


def llama3_scale_inv_freq(inv_freq, rs):
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    orig = rs["original_max_position_embeddings"]
    low_freq_wavelen = orig / low
    high_freq_wavelen = orig / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(cfg):
    """float64 (head_dim/2,): theta^(-2i/head_dim), llama3-scaled when configured."""
    exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim
    inv = cfg.rope_theta ** (-exponent)
    if cfg.rope_scaling is not None:
        inv = llama3_scale_inv_freq(inv, cfg.rope_scaling)
    return inv


def rope_cos_sin(cfg, seq_len, dtype):
    """cos, sin of shape (T, head_dim) in the HF layout: angles repeated for both halves."""
    pos = torch.arange(seq_len, dtype=torch.float64)
    angles = pos[:, None] * rope_inv_freq(cfg)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def round_bf16(t):
    """t rounded to bfloat16 (nearest even, through float32 as an fp32 engine holds it), same dtype."""
    return t.to(torch.float32).to(torch.bfloat16).to(t.dtype)


class Bf16Product(torch.autograd.Function):
    """y = bf16(x) bf16(W)^T, with the input gradient bf16(dy) bf16(W): the frozen-weight products
    under compute dtype bfloat16 (docs/reference-interchange.md). The products of the rounded
    operands are summed in the tensors' dtype (float64 here), i.e. exactly."""

    @staticmethod
    def forward(ctx, x, w):
        wr = round_bf16(w)
        ctx.save_for_backward(wr)
        return round_bf16(x) @ wr.t()

    @staticmethod
    def backward(ctx, dy):
        (wr,) = ctx.saved_tensors
        return round_bf16(dy) @ wr, None


class LlamaLora:
    """Functional LlamaForCausalLM + LoRA over dicts of HF-named tensors.

    `base` holds frozen tensors; `lora` the adapters (callers set requires_grad). With
    bf16_products the frozen-weight products round their operands to bfloat16 (Bf16Product);
    the LoRA path, norms, attention and the loss stay in the tensors' dtype. With kv_bf16 the keys
    (after RoPE) and values are rounded to bfloat16 at every position, as a bf16 KV cache holds
    them (lorad's inference on a base whose linear weights are all BF16, docs/engine.md)."""

    def __init__(self, cfg, lcfg, base, bf16_products=False, kv_bf16=False):
        self.cfg, self.lcfg, self.base = cfg, lcfg, base
        self.bf16_products = bf16_products
        self.kv_bf16 = kv_bf16
        self.dora_norms = None  # prefix -> ||W + scale B A|| held fixed (the selftest's finite differences)

    def linear(self, x, lora, prefix, weight=None):
        w = self.base[prefix + ".weight"] if weight is None else weight
        base_out = Bf16Product.apply(x, w) if self.bf16_products else F.linear(x, w)
        bias = self.base.get(prefix + ".bias")
        y = base_out if bias is None else base_out + bias
        a = lora.get(prefix + ".lora_A.weight")
        if a is None:
            return y
        b = lora[prefix + ".lora_B.weight"]
        delta = self.lcfg.scale * F.linear(F.linear(x, a), b)
        mag = lora.get(prefix + ".lora_magnitude_vector")
        if mag is None:
            return y + delta
        # DoRA (Liu et al. 2024, eq. 5 with section 4.3's detached norm): the adapted weight is
        # m * V / ||V||_c with V = W + scale B A and ||.||_c the norm of each output row; with
        # s = m / ||V|| that is y = W x + b + (s - 1) W x + s * scale B A x.
        if self.dora_norms is not None:
            norm = self.dora_norms[prefix]
        else:
            norm = torch.linalg.vector_norm(w + self.lcfg.scale * (b @ a), dim=1).detach()
        s = mag / norm
        return y + (s - 1) * base_out + s * delta

    def logits(self, lora, input_ids, run_layer=None):
        """input_ids (B, T) int64 -> logits (B, T, V). run_layer(fn, *args), if given, calls each
        decoder layer (a benchmark passes torch.utils.checkpoint.checkpoint)."""
        cfg, base = self.cfg, self.base
        seq = input_ids.shape[1]
        embed = base["model.embed_tokens.weight"]
        dtype = embed.dtype
        x = embed[input_ids]  # (B, T, d)
        cos, sin = rope_cos_sin(cfg, seq, dtype)  # (T, hd)
        causal = torch.full((seq, seq), float("-inf"), dtype=dtype).triu(1)  # (T, T)
        for i in range(cfg.layers):
            if run_layer is None:
                x = self.layer(i, x, lora, cos, sin, causal)
            else:
                x = run_layer(self.layer, i, x, lora, cos, sin, causal)
        x = rms_norm(x, base["model.norm.weight"], cfg.eps)
        # a residual base of a tied head is the head's own: the embedding stays as it was
        head = base["lm_head.weight"] if "lm_head.weight" in base else embed
        return self.linear(x, lora, "lm_head", weight=head)

    def layer(self, i, x, lora, cos, sin, causal):
        """Decoder layer i: x (B, T, d) -> (B, T, d)."""
        cfg, base = self.cfg, self.base
        batch, seq = x.shape[0], x.shape[1]
        n_rep = cfg.heads // cfg.kv_heads
        hd = cfg.head_dim
        p = f"model.layers.{i}."
        h = rms_norm(x, base[p + "input_layernorm.weight"], cfg.eps)
        q = self.linear(h, lora, p + "self_attn.q_proj").view(batch, seq, cfg.heads, hd).transpose(1, 2)
        k = self.linear(h, lora, p + "self_attn.k_proj").view(batch, seq, cfg.kv_heads, hd).transpose(1, 2)
        v = self.linear(h, lora, p + "self_attn.v_proj").view(batch, seq, cfg.kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin  # (B, H, T, hd)
        k = k * cos + rotate_half(k) * sin  # (B, KV, T, hd)
        if self.kv_bf16:
            k, v = round_bf16(k), round_bf16(v)
        # query head h reads kv head h // n_rep
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd) + causal  # (B, H, T, T)
        att = torch.softmax(scores, dim=-1) @ v  # (B, H, T, hd)
        att = att.transpose(1, 2).reshape(batch, seq, cfg.heads * hd)
        x = x + self.linear(att, lora, p + "self_attn.o_proj")
        h = rms_norm(x, base[p + "post_attention_layernorm.weight"], cfg.eps)
        gate = self.linear(h, lora, p + "mlp.gate_proj")
        up = self.linear(h, lora, p + "mlp.up_proj")
        return x + self.linear(F.silu(gate) * up, lora, p + "mlp.down_proj")

    def step_loss(self, lora, input_ids, labels, backward=True, run_layer=None):
        """One optimiser step's loss over micro-batches input_ids/labels (m, B, T):
        sum of CE over unmasked labels / their count. With backward, accumulates into .grad."""
        count = int((labels != IGNORE_INDEX).sum())
        if count == 0:
            raise CaseError("labels: a step has no unmasked label (loss undefined)")
        total = 0.0
        for mb in range(input_ids.shape[0]):
            logits = self.logits(lora, input_ids[mb], run_layer)
            ce_sum = F.cross_entropy(logits.reshape(-1, self.cfg.vocab), labels[mb].reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum")
            if backward:
                (ce_sum / count).backward()
            total += float(ce_sum.detach())
        return total / count


# ---------------------------------------------------------------------------------------------
# Training (AdamW with torch.optim.AdamW semantics, written out so the order is explicit)


def global_grad_norm(params):
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))


def adamw_update(params, grads, m, v, t, lr, tc):
    """One AdamW step (t is 1-based) on tensors in place."""
    bc1 = 1.0 - tc.beta1 ** t
    bc2 = 1.0 - tc.beta2 ** t
    for p, g, mi, vi in zip(params, grads, m, v):
        p.mul_(1.0 - lr * tc.weight_decay)
        mi.mul_(tc.beta1).add_(g, alpha=1.0 - tc.beta1)
        vi.mul_(tc.beta2).addcmul_(g, g, value=1.0 - tc.beta2)
        denom = (vi.sqrt() / math.sqrt(bc2)).add_(tc.eps)
        p.addcdiv_(mi, denom, value=-lr / bc1)


def train(model, lora_init, tc, input_ids, labels, use_torch_optim=False):
    """Run tc.steps optimiser steps. Returns (step_losses, grad_norms, final lora dict).
    use_torch_optim swaps the hand AdamW for torch.optim.AdamW + LambdaLR + clip_grad_norm_
    (selftest uses it to check the hand version)."""
    names = list(lora_init)
    lora = {n: lora_init[n].detach().clone().requires_grad_(True) for n in names}
    params = [lora[n] for n in names]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    if use_torch_optim:
        opt = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps,
                                weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(tc, s) / tc.lr)
    step_losses, grad_norms = [], []
    ga = tc.grad_accum
    for s in range(tc.steps):
        for p in params:
            p.grad = None
        step_losses.append(model.step_loss(lora, input_ids[s * ga:(s + 1) * ga], labels[s * ga:(s + 1) * ga]))
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = global_grad_norm(params)
        grad_norms.append(norm)
        if use_torch_optim:
            if tc.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            opt.step()
            sched.step()
            continue
        with torch.no_grad():
            if tc.max_grad_norm > 0 and norm > tc.max_grad_norm:
                coef = tc.max_grad_norm / (norm + 1e-6)
                for p in params:
                    p.grad.mul_(coef)
            adamw_update(params, [p.grad for p in params], m, v, s + 1, lr_at(tc, s), tc)
    return step_losses, grad_norms, {n: lora[n].detach() for n in names}


# ---------------------------------------------------------------------------------------------
# Cases and results


class Case:
    pass


def load_case(path):
    try:
        tensors, meta = safetensors_io.read(path)
    except safetensors_io.SafetensorsError as e:
        raise CaseError(str(e)) from e

    def meta_json(key):
        if key not in meta:
            raise CaseError(f"{path}: __metadata__ lacks '{key}'")
        try:
            value = json.loads(meta[key])
        except json.JSONDecodeError as e:
            raise CaseError(f"{path}: __metadata__ '{key}' is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise CaseError(f"{path}: __metadata__ '{key}' is not a JSON object")
        return value

    c = Case()
    c.path = path
    try:
        c.cfg = ModelConfig(meta_json("config"))
        c.lcfg = LoraConfig(meta_json("lora"))
        c.tc = TrainConfig(meta_json("train"))
        c.compute_dtype = meta_json("compute").get("dtype", "float32") if "compute" in meta else "float32"
        if c.compute_dtype not in ("float32", "bfloat16"):
            raise CaseError(f"compute dtype {c.compute_dtype!r} is not float32 or bfloat16")
    except CaseError as e:
        raise CaseError(f"{path}: {e}") from e

    base_shapes = c.cfg.base_shapes()
    lora_shapes = c.lcfg.shapes(c.cfg)
    known = set(base_shapes) | set(lora_shapes) | {"input_ids", "labels"}
    for name in tensors:
        if name == "lm_head.weight" and c.cfg.tied:
            if not np.array_equal(tensors[name], tensors.get("model.embed_tokens.weight")):
                raise CaseError(f"{path}: tie_word_embeddings but lm_head.weight differs from embed_tokens")
            continue
        if name not in known:
            raise CaseError(f"{path}: unexpected tensor '{name}' (not a base weight, not a LoRA "
                            f"tensor of targets {list(c.lcfg.targets)}, not data)")

    def get(name, shape, kind):
        if name not in tensors:
            raise CaseError(f"{path}: missing tensor '{name}'")
        arr = tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise CaseError(f"{path}: tensor '{name}' has shape {list(arr.shape)}, expected {list(shape)}")
        if kind == "float":
            if arr.dtype.kind != "f":
                raise CaseError(f"{path}: tensor '{name}' must be floating point, is {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise CaseError(f"{path}: tensor '{name}' holds non-finite values")
            return torch.from_numpy(arr.astype(np.float64))
        if arr.dtype.kind != "i":
            raise CaseError(f"{path}: tensor '{name}' must be I32/I64, is {arr.dtype}")
        return torch.from_numpy(arr.astype(np.int64))

    c.base = {n: get(n, s, "float") for n, s in base_shapes.items()}
    if c.lcfg.init in ("pissa", "olora"):
        residual_base(c)
    c.lora_init = {n: get(n, s, "float") for n, s in lora_shapes.items()}
    if "input_ids" not in tensors or tensors["input_ids"].ndim != 3:
        raise CaseError(f"{path}: input_ids must be present with shape (M, B, T)")
    c.input_ids = get("input_ids", tensors["input_ids"].shape, "int")
    c.labels = get("labels", tensors["input_ids"].shape, "int")
    m, b, t = c.input_ids.shape
    if m < 1 or b < 1 or t < 1:
        raise CaseError(f"{path}: input_ids shape {[m, b, t]} has an empty dimension")
    if int(c.input_ids.min()) < 0 or int(c.input_ids.max()) >= c.cfg.vocab:
        raise CaseError(f"{path}: input_ids outside [0, {c.cfg.vocab})")
    lab = c.labels[c.labels != IGNORE_INDEX]
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= c.cfg.vocab):
        raise CaseError(f"{path}: labels outside [0, {c.cfg.vocab}) and not -100")
    if c.tc.steps > 0:
        need = c.tc.steps * c.tc.grad_accum
        if m < need:
            raise CaseError(f"{path}: {m} micro-batches but steps*grad_accum = {need}")
        if m > need:
            print(f"warning: {path}: {m - need} micro-batches beyond steps*grad_accum are unused",
                  file=sys.stderr)
    return c


def residual_base(c):
    """Replaces each adapted weight W of c.base by W - scale B0 A0, B0 A0 the init's product from
    its definition (lora_init_decomp.reference: the truncated SVD over scale for PiSSA, Q_r R_r for
    OLoRA), so the case's adapter trains on what PiSSA / OLoRA leave of the base."""
    from lora_init_decomp import reference as init_product
    s, r = c.lcfg.scale, c.lcfg.r
    for module in c.lcfg.targets:
        for p in module_prefixes(c.cfg, module):
            name = p + ".weight"
            w = c.base[name] if name in c.base else c.base["model.embed_tokens.weight"]  # a tied head
            product, _ = init_product(c.lcfg.init, w, r, s)
            c.base[name] = w - s * product


def expected_result_shapes(c):
    shapes = {"loss": (1,)}
    lora_shapes = c.lcfg.shapes(c.cfg)
    if c.tc.steps == 0:
        shapes.update({"grad." + n: s for n, s in lora_shapes.items()})
    else:
        shapes["step_loss"] = (c.tc.steps,)
        shapes["grad_norm"] = (c.tc.steps,)
        shapes.update({"final." + n: s for n, s in lora_shapes.items()})
    return shapes


def step_tokens(c):
    """Tokens one optimiser step sums over: all micro-batches with steps = 0, else grad_accum."""
    _, b, t = c.input_ids.shape
    micro = c.input_ids.shape[0] if c.tc.steps == 0 else c.tc.grad_accum
    return micro * b * t


def float32_tolerance(name, c):
    if name == "loss" or name.startswith("grad."):
        return float32_bound(c.cfg, step_tokens(c), dora=c.lcfg.use_dora,
                             residual=c.lcfg.init in ("pissa", "olora"))
    return TRAIN_TOL


# Under compute dtype bfloat16 the engine's fp32 values and this float64 reference can round an
# operand to neighbouring bf16 values where it lies within their difference of a rounding
# boundary. Such a flip moves that operand by one bf16 spacing, at most twice its own rounding
# error, and only a fraction P of operands is that close: P <= 2^8 * delta for a relative fp32
# deviation delta, which is at most 6 sqrt(n) u per stage over ~30 stages, so P < 3e-2 for these
# sizes. With independent signs the flips move a result by at most 2 sqrt(P) ~ 0.35 of what all
# the roundings together move it (E, the distance between this reference with and without bf16
# rounding, computed per tensor). Hence the float32 tolerance plus BF16_FLIP_SHARE * E. An engine
# that did not round would be off by E itself, which exceeds that whenever E > 2 * the float32
# tolerance; cmd_compare refuses a bf16 case where no tensor has such an E.
BF16_FLIP_SHARE = 0.5


def tolerance_for(name, c):
    return float32_tolerance(name, c) + BF16_FLIP_SHARE * getattr(c, "bf16_effect", {}).get(name, 0.0)


def compute_result(c, bf16_products=None):
    """The reference's result tensors (float64 numpy), keyed as in the result file; the case's
    compute dtype decides the frozen-weight products unless bf16_products says."""
    if bf16_products is None:
        bf16_products = c.compute_dtype == "bfloat16"
    model = LlamaLora(c.cfg, c.lcfg, c.base, bf16_products=bf16_products)
    if c.tc.steps == 0:
        lora = {n: t.clone().requires_grad_(True) for n, t in c.lora_init.items()}
        loss = model.step_loss(lora, c.input_ids, c.labels)
        out = {"loss": np.array([loss])}
        for n, t in lora.items():
            g = t.grad if t.grad is not None else torch.zeros_like(t)
            out["grad." + n] = g.detach().numpy().copy()
        return out
    step_losses, grad_norms, final = train(model, c.lora_init, c.tc, c.input_ids, c.labels)
    out = {"loss": np.array(step_losses[:1]), "step_loss": np.array(step_losses),
           "grad_norm": np.array(grad_norms)}
    out.update({"final." + n: t.numpy().copy() for n, t in final.items()})
    return out


def relative_error(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return math.inf
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    denom = float(np.max(np.abs(ref))) if ref.size else 0.0
    return diff / denom if denom > 0 else diff


def compare_results(expected, got, result_path, c, out=sys.stdout):
    """Compare result tensors `got` with the reference `expected`; print a table.
    Returns True when every expected tensor is present, shaped right and within tolerance,
    and no extra tensor exists."""
    rows, ok = [], True
    worst = (None, -1.0, 1.0)  # (name, rel.err, tol) with the largest err/tol
    for name in expected:
        tol = tolerance_for(name, c)
        ref = expected[name]
        if name not in got:
            rows.append((name, list(ref.shape), "-", tol, "MISSING"))
            ok = False
            continue
        g = got[name]
        if tuple(g.shape) != tuple(ref.shape):
            rows.append((name, list(g.shape), "-", tol, f"SHAPE (want {list(ref.shape)})"))
            ok = False
            continue
        if g.dtype.kind != "f":
            rows.append((name, list(g.shape), "-", tol, f"DTYPE {g.dtype}"))
            ok = False
            continue
        err = relative_error(g, ref)
        passed = err <= tol
        ok &= passed
        rows.append((name, list(g.shape), f"{err:.3e}", tol, "ok" if passed else "FAIL"))
        if worst[0] is None or err / tol > worst[1] / worst[2]:
            worst = (name, err, tol)
    for name in sorted(set(got) - set(expected)):
        rows.append((name, list(got[name].shape), "-", "-", "EXTRA (not expected)"))
        ok = False
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'tensor':<{width}}  {'shape':<14} {'rel.err':>10} {'tol':>9}  status", file=out)
    for name, shape, err, tol, status in rows:
        tol_text = tol if isinstance(tol, str) else f"{tol:.3g}"
        print(f"{name:<{width}}  {str(shape):<14} {err:>10} {tol_text:>9}  {status}", file=out)
    if worst[0] is not None:
        print(f"worst: {worst[0]} rel.err {worst[1]:.3e} (tol {worst[2]:.3g})", file=out)
    print(f"{'PASS' if ok else 'FAIL'}: {result_path}", file=out)
    return ok


def load_result(path):
    try:
        tensors, _ = safetensors_io.read(path)
    except safetensors_io.SafetensorsError as e:
        raise CaseError(str(e)) from e
    return tensors


def cmd_compare(case_path, result_path, out=sys.stdout):
    """Exit code: 0 pass, 1 mismatch, 2 malformed input."""
    try:
        c = load_case(case_path)
        got = load_result(result_path)
        expected = compute_result(c)
        if c.compute_dtype == "bfloat16":
            without = compute_result(c, bf16_products=False)
            c.bf16_effect = {n: relative_error(expected[n], without[n]) for n in expected}
    except CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if c.compute_dtype == "bfloat16":
        telling = [n for n, e in c.bf16_effect.items() if e > 2 * float32_tolerance(n, c)]
        print(f"bf16 case: {len(telling)} of {len(c.bf16_effect)} tensors tell bf16 from fp32 compute "
              f"(largest effect {max(c.bf16_effect.values()):.3e})", file=out)
        if not telling:
            print("FAIL: this case cannot tell bf16 compute from fp32 compute", file=out)
            return 1
    return 0 if compare_results(expected, got, result_path, c, out=out) else 1


def cmd_run(case_path, out_path):
    try:
        c = load_case(case_path)
        result = compute_result(c)
    except CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    safetensors_io.write(out_path, {n: a.astype(np.float32) for n, a in result.items()})
    return 0


# ---------------------------------------------------------------------------------------------
# Random cases

PRESETS = {
    # name: (config overrides, lora overrides, data (M, B, T))
    "tiny-mha": ({"num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 4},
                 {"target_modules": ["q_proj", "v_proj"]}, (2, 2, 8)),
    "tiny-gqa": ({"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
                  "tie_word_embeddings": True},
                 {"target_modules": list(ALL_TARGETS)}, (2, 2, 8)),
    "tiny-llama3": ({"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
                     "attention_bias": True,
                     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 10.0,
                                      "original_max_position_embeddings": 100}},
                    {"target_modules": list(ALL_TARGETS), "use_rslora": True}, (2, 2, 8)),
    "stories": ({"vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
                 "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4,
                 "head_dim": 8, "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
                {"target_modules": list(ALL_TARGETS)}, (2, 2, 32)),
}


def base_hf_config():
    return {"vocab_size": 37, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 4,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
            "tie_word_embeddings": False, "attention_bias": False, "max_position_embeddings": 128}


def random_weights(cfg, lcfg, gen, dtype=torch.float64):
    """Random base + LoRA tensors: projections ~ N(0, 1/in), norms ~ 1 + N(0, 0.1^2),
    embeddings ~ N(0, 1), biases ~ N(0, 0.1^2), lora_B nonzero so every gradient is nonzero."""
    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype).mul_(std)

    base = {}
    for name, shape in cfg.base_shapes().items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            base[name] = (1.0 + randn(*shape, std=0.1)).to(dtype)
        elif name == "model.embed_tokens.weight":
            base[name] = randn(*shape)
        elif name.endswith(".bias"):
            base[name] = randn(*shape, std=0.1)
        else:
            base[name] = randn(*shape, std=1.0 / math.sqrt(shape[1]))
    lora = {}
    for name, shape in lcfg.shapes(cfg).items():
        if name.endswith(".lora_magnitude_vector"):
            continue
        fan_in = shape[1]
        std = 1.0 / math.sqrt(fan_in) if ".lora_A." in name else 0.5 / math.sqrt(fan_in)
        lora[name] = randn(*shape, std=std)
    for name, shape in lcfg.shapes(cfg).items():
        if not name.endswith(".lora_magnitude_vector"):
            continue
        # where DoRA starts (the adapted weight's row norms), moved by 20% so that m / ||V|| != 1
        prefix = name[: -len(".lora_magnitude_vector")]
        w = base[prefix + ".weight"] if prefix + ".weight" in base else base["model.embed_tokens.weight"]
        v = w + lcfg.scale * (lora[prefix + ".lora_B.weight"] @ lora[prefix + ".lora_A.weight"])
        lora[name] = torch.linalg.vector_norm(v, dim=1) * (1.0 + randn(*shape, std=0.2))
    return base, lora


def random_data(cfg, gen, shape, mask_fraction=0.25):
    ids = torch.randint(0, cfg.vocab, shape, generator=gen)
    labels = torch.randint(0, cfg.vocab, shape, generator=gen)
    mask = torch.rand(shape, generator=gen, dtype=torch.float64) < mask_fraction
    labels[mask] = IGNORE_INDEX
    labels[..., -1] = torch.randint(0, cfg.vocab, shape[:-1], generator=gen)  # never all masked
    return ids, labels


def default_train(steps):
    return {"steps": steps, "grad_accum": 1, "lr": 1e-3, "warmup_steps": 0, "lr_scheduler": "constant",
            "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
            "max_grad_norm": None}


def make_case(out_path, preset, seed, train_over=None, lora_over=None, data_shape=None):
    if preset not in PRESETS:
        raise CaseError(f"unknown --config {preset!r}; choose from {sorted(PRESETS)}")
    cfg_over, lora_preset, shape = PRESETS[preset]
    hf = base_hf_config()
    hf.update(cfg_over)
    lora_d = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
              "use_rslora": False}
    lora_d.update(lora_preset)
    lora_d.update(lora_over or {})
    train_d = default_train(0)
    train_d.update(train_over or {})
    if data_shape is None:
        m, b, t = shape
        if train_d["steps"] > 0:
            m = train_d["steps"] * train_d["grad_accum"]
        data_shape = (m, b, t)
    cfg, lcfg = ModelConfig(hf), LoraConfig(lora_d)
    TrainConfig(train_d)
    gen = torch.Generator().manual_seed(seed)
    base, lora = random_weights(cfg, lcfg, gen)
    ids, labels = random_data(cfg, gen, data_shape)
    tensors = {n: t.numpy().astype(np.float32) for n, t in {**base, **lora}.items()}
    tensors["input_ids"] = ids.numpy().astype(np.int32)
    tensors["labels"] = labels.numpy().astype(np.int32)
    meta = {"config": json.dumps(hf), "lora": json.dumps(lora_d), "train": json.dumps(train_d)}
    safetensors_io.write(out_path, tensors, meta)


# ---------------------------------------------------------------------------------------------
# Selftest: verifies the reference itself


class Checker:
    def __init__(self):
        self.failures = 0

    def check(self, name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'  ' + detail if detail else ''}")
        if not ok:
            self.failures += 1


def random_config(gen, **force):
    """A random tiny config; `force` pins features so every feature is covered."""
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    heads = pick([2, 4])
    hf = base_hf_config()
    hf.update({"vocab_size": pick([11, 19]), "hidden_size": pick([8, 12]),
               "intermediate_size": pick([10, 14]), "num_hidden_layers": 2,
               "num_attention_heads": heads, "num_key_value_heads": pick([1, heads // 2, heads]),
               "head_dim": pick([4, 6]), "tie_word_embeddings": pick([True, False]),
               "attention_bias": pick([True, False]), "rms_norm_eps": 1e-5})
    if pick([True, False]):
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 24}
    hf.update(force)
    return hf


def fd_check(ck, name, hf, lora_d, gen):
    """Autograd LoRA gradients vs central finite differences in float64."""
    cfg, lcfg = ModelConfig(hf), LoraConfig(lora_d)
    base, lora0 = random_weights(cfg, lcfg, gen)
    ids, labels = random_data(cfg, gen, (2, 2, 5), mask_fraction=0.4)
    model = LlamaLora(cfg, lcfg, base)
    lora = {n: t.clone().requires_grad_(True) for n, t in lora0.items()}
    model.step_loss(lora, ids, labels)
    h = 1e-6

    def f(tensors):
        return model.step_loss(tensors, ids, labels, backward=False)

    worst = 0.0
    with torch.no_grad():
        for n, t in lora0.items():
            g = lora[n].grad
            gmax = float(g.abs().max())
            # two random entries plus the entry of the largest gradient
            idx = [int(torch.randint(t.numel(), (1,), generator=gen)) for _ in range(2)]
            idx.append(int(g.abs().argmax()))
            for j in idx:
                plus = dict(lora0)
                minus = dict(lora0)
                plus[n] = t.clone().view(-1)
                plus[n][j] += h
                plus[n] = plus[n].view_as(t)
                minus[n] = t.clone().view(-1)
                minus[n][j] -= h
                minus[n] = minus[n].view_as(t)
                fd = (f(plus) - f(minus)) / (2 * h)
                worst = max(worst, abs(fd - float(g.view(-1)[j])) / max(gmax, 1e-12))
        # directional derivative along a random direction in all LoRA tensors at once
        direction = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in lora0.items()}
        plus = {n: t + h * direction[n] for n, t in lora0.items()}
        minus = {n: t - h * direction[n] for n, t in lora0.items()}
        fd = (f(plus) - f(minus)) / (2 * h)
        ad = sum(float((lora[n].grad * direction[n]).sum()) for n in lora0)
        dir_err = abs(fd - ad) / max(abs(ad), 1e-12)
    ck.check(f"finite differences {name}", worst < 1e-6 and dir_err < 1e-6,
             f"(max entry rel.err {worst:.1e}, directional {dir_err:.1e}, {len(lora0)} tensors)")


def selftest_gradients(ck):
    gen = torch.Generator().manual_seed(1234)
    all_t = list(ALL_TARGETS)
    llama3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 24}
    cases = [
        ("MHA untied qv", random_config(gen, num_attention_heads=2, num_key_value_heads=2,
                                        tie_word_embeddings=False), ["q_proj", "v_proj"], False),
        ("GQA tied bias all-targets", random_config(gen, num_attention_heads=4, num_key_value_heads=2,
                                                    tie_word_embeddings=True, attention_bias=True), all_t, False),
        ("MQA llama3 head_dim!=d/h rslora", random_config(gen, num_attention_heads=4, num_key_value_heads=1,
                                                          hidden_size=8, head_dim=6, rope_scaling=llama3),
         all_t, True),
        ("random A", random_config(gen), all_t, False),
        ("random B", random_config(gen), ["k_proj", "o_proj", "down_proj", "lm_head"], True),
    ]
    for name, hf, targets, rslora in cases:
        lora_d = {"r": 3, "alpha": 5.0, "dropout": 0.0, "target_modules": targets, "use_rslora": rslora}
        fd_check(ck, name, hf, lora_d, gen)


def selftest_dora(ck):
    """DoRA's forward against the two facts that define it, and its gradients against finite
    differences of the function autograd differentiates: the norm held at its value (the paper's
    section 4.3 makes it a constant in backward), so the check is exact for A, B and m alike."""
    gen = torch.Generator().manual_seed(4242)
    close = lambda a, b: float((a - b).abs().max()) <= 1e-10 * max(1.0, float(b.abs().max()))  # noqa: E731
    hf = random_config(gen, attention_bias=True, tie_word_embeddings=False)
    cfg = ModelConfig(hf)
    lora_d = {"r": 3, "alpha": 6.0, "target_modules": list(ALL_TARGETS), "use_dora": True}
    lcfg, plain = LoraConfig(lora_d), LoraConfig(dict(lora_d, use_dora=False))
    base, lora = random_weights(cfg, lcfg, gen)
    ids, labels = random_data(cfg, gen, (2, 2, 5), mask_fraction=0.4)

    def adapted(prefix):
        w = base[prefix + ".weight"]
        return w + lcfg.scale * lora[prefix + ".lora_B.weight"] @ lora[prefix + ".lora_A.weight"]

    prefixes = [n[: -len(".lora_magnitude_vector")] for n in lora if n.endswith(".lora_magnitude_vector")]
    # the merged weight m * V / ||V||_c (rows), biases untouched
    merged = dict(base)
    for p in prefixes:
        v = adapted(p)
        merged[p + ".weight"] = lora[p + ".lora_magnitude_vector"].unsqueeze(1) * v / torch.linalg.vector_norm(
            v, dim=1, keepdim=True)
    ck.check("DoRA == merged m * V / ||V||", close(LlamaLora(cfg, lcfg, base).logits(lora, ids[0]),
                                                  LlamaLora(cfg, lcfg, merged).logits({}, ids[0])))
    # at m = ||V|| (where PEFT starts it, at B = 0) DoRA is plain LoRA
    at_norm = dict(lora)
    for p in prefixes:
        at_norm[p + ".lora_magnitude_vector"] = torch.linalg.vector_norm(adapted(p), dim=1)
    plain_lora = {n: t for n, t in lora.items() if not n.endswith(".lora_magnitude_vector")}
    ck.check("DoRA at m = ||V|| == LoRA", close(LlamaLora(cfg, lcfg, base).logits(at_norm, ids[0]),
                                               LlamaLora(cfg, plain, base).logits(plain_lora, ids[0])))

    model = LlamaLora(cfg, lcfg, base)
    params = {n: t.clone().requires_grad_(True) for n, t in lora.items()}
    model.step_loss(params, ids, labels)
    model.dora_norms = {p: torch.linalg.vector_norm(adapted(p), dim=1) for p in prefixes}
    h, worst = 1e-6, 0.0
    with torch.no_grad():
        for n, t in lora.items():
            g = params[n].grad
            for j in (int(torch.randint(t.numel(), (1,), generator=gen)), int(g.abs().argmax())):
                plus, minus = dict(lora), dict(lora)
                plus[n] = t.clone().view(-1)
                plus[n][j] += h
                minus[n] = t.clone().view(-1)
                minus[n][j] -= h
                plus[n], minus[n] = plus[n].view_as(t), minus[n].view_as(t)
                fd = (model.step_loss(plus, ids, labels, backward=False)
                      - model.step_loss(minus, ids, labels, backward=False)) / (2 * h)
                worst = max(worst, abs(fd - float(g.view(-1)[j])) / max(float(g.abs().max()), 1e-12))
    ck.check("DoRA finite differences (norm held)", worst < 1e-6,
             f"(max entry rel.err {worst:.1e}, {len(lora)} tensors)")


def selftest_properties(ck):
    """Forward-pass facts that finite differences cannot see."""
    gen = torch.Generator().manual_seed(99)
    close = lambda a, b: float((a - b).abs().max()) <= 1e-10 * max(1.0, float(b.abs().max()))  # noqa: E731

    # LoRA equals merging W + scale * B @ A into the base weight.
    hf = random_config(gen, attention_bias=True, tie_word_embeddings=False)
    cfg = ModelConfig(hf)
    for rslora in (False, True):
        lcfg = LoraConfig({"r": 3, "alpha": 7.0, "target_modules": list(ALL_TARGETS), "use_rslora": rslora})
        base, lora = random_weights(cfg, lcfg, gen)
        ids, _ = random_data(cfg, gen, (2, 6))
        merged = dict(base)
        for n in lora:
            if n.endswith(".lora_A.weight"):
                prefix = n[:-len(".lora_A.weight")]
                merged[prefix + ".weight"] = (base[prefix + ".weight"]
                                              + lcfg.scale * lora[prefix + ".lora_B.weight"] @ lora[n])
        expect_scale = 7.0 / (math.sqrt(3) if rslora else 3)
        ck.check(f"LoRA == merged weights (rslora={rslora})",
                 close(LlamaLora(cfg, lcfg, base).logits(lora, ids), LlamaLora(cfg, lcfg, merged).logits({}, ids))
                 and abs(lcfg.scale - expect_scale) < 1e-15)

    # Causality: changing token t leaves logits before t unchanged and changes those from t on.
    lcfg = LoraConfig({"r": 2, "alpha": 2.0, "target_modules": ["q_proj"]})
    base, lora = random_weights(cfg, lcfg, gen)
    model = LlamaLora(cfg, lcfg, base)
    ids, _ = random_data(cfg, gen, (1, 7))
    ids2 = ids.clone()
    ids2[0, 4] = (ids[0, 4] + 1) % cfg.vocab
    a, b = model.logits(lora, ids), model.logits(lora, ids2)
    ck.check("causal attention", close(a[:, :4], b[:, :4]) and not close(a[:, 4:], b[:, 4:]))

    # GQA grouping: query head h reads kv head h // n_rep; build the equivalent MHA by hand.
    hf = random_config(gen, num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    cfg = ModelConfig(hf)
    base, lora = random_weights(cfg, lcfg, gen)
    mha_hf = dict(hf, num_key_value_heads=4)
    mha_base = dict(base)
    hd, n_rep = cfg.head_dim, cfg.heads // cfg.kv_heads
    for i in range(cfg.layers):
        for m in ("k_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{m}"
            for suffix in (".weight", ".bias"):
                w = base[key + suffix]
                rows = [w[(h // n_rep) * hd:(h // n_rep + 1) * hd] for h in range(cfg.heads)]
                mha_base[key + suffix] = torch.cat(rows, dim=0)
    ids, _ = random_data(cfg, gen, (2, 6))
    ck.check("GQA head grouping h // n_rep",
             close(LlamaLora(cfg, lcfg, base).logits(lora, ids),
                   LlamaLora(ModelConfig(mha_hf), lcfg, mha_base).logits(lora, ids)))

    # Tied embeddings == untied with lm_head = embed.
    hf = random_config(gen, tie_word_embeddings=True)
    lcfg_h = LoraConfig({"r": 2, "alpha": 2.0, "target_modules": ["lm_head", "v_proj"]})
    cfg = ModelConfig(hf)
    base, lora = random_weights(cfg, lcfg_h, gen)
    untied = dict(base, **{"lm_head.weight": base["model.embed_tokens.weight"]})
    ck.check("tied == untied copy",
             close(LlamaLora(cfg, lcfg_h, base).logits(lora, ids % cfg.vocab),
                   LlamaLora(ModelConfig(dict(hf, tie_word_embeddings=False)), lcfg_h, untied)
                   .logits(lora, ids % cfg.vocab)))

    # RoPE in the HF half-split layout, checked one scalar pair at a time: element j and
    # j + hd/2 rotate by angle pos * theta^(-2j/hd).
    hf = base_hf_config()
    hf.update(head_dim=6, rope_theta=500.0)
    cfg = ModelConfig(hf)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    cos, sin = rope_cos_sin(cfg, 5, torch.float64)
    got = x * cos + rotate_half(x) * sin
    want = torch.empty_like(x)
    for pos in range(5):
        for j in range(3):
            ang = pos * 500.0 ** (-2 * j / 6)
            x1, x2 = float(x[pos, j]), float(x[pos, j + 3])
            want[pos, j] = x1 * math.cos(ang) - x2 * math.sin(ang)
            want[pos, j + 3] = x2 * math.cos(ang) + x1 * math.sin(ang)
    ck.check("RoPE rotate_half layout", close(got, want))

    # Llama-3 scaling, rule by rule in scalars; the config puts one frequency in each band.
    hf.update(head_dim=8, rope_theta=10000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 10.0, "original_max_position_embeddings": 100})
    inv = rope_inv_freq(ModelConfig(hf))
    bands, want = [], []
    for j in range(4):
        f0 = 10000.0 ** (-2 * j / 8)
        wavelen = 2 * math.pi / f0
        if wavelen < 100 / 10.0:
            bands.append("high")
            want.append(f0)
        elif wavelen > 100 / 1.0:
            bands.append("low")
            want.append(f0 / 8.0)
        else:
            bands.append("mid")
            smooth = (100 / wavelen - 1.0) / (10.0 - 1.0)
            want.append((1 - smooth) * f0 / 8.0 + smooth * f0)
    ck.check("llama3 rope scaling", close(inv, torch.tensor(want, dtype=torch.float64))
             and set(bands) == {"high", "mid", "low"}, f"(bands {bands})")

    # Loss: sum of CE over unmasked labels of all micro-batches / their count, by explicit logsumexp.
    hf = random_config(gen)
    cfg = ModelConfig(hf)
    base, lora = random_weights(cfg, lcfg, gen)
    ids, labels = random_data(cfg, gen, (3, 2, 5), mask_fraction=0.5)
    model = LlamaLora(cfg, lcfg, base)
    total, count = 0.0, 0
    for mb in range(3):
        logits = model.logits(lora, ids[mb])
        for bi in range(2):
            for t in range(5):
                y = int(labels[mb, bi, t])
                if y == IGNORE_INDEX:
                    continue
                row = logits[bi, t]
                total += float(torch.logsumexp(row, 0) - row[y])
                count += 1
    got = model.step_loss(lora, ids, labels, backward=False)
    ck.check("loss normalisation over micro-batches", abs(got - total / count) < 1e-12 * abs(total / count))

    # RMSNorm formula.
    x = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(8, generator=gen, dtype=torch.float64)
    want = torch.stack([x[i] / math.sqrt(float((x[i] ** 2).mean()) + 1e-5) * w for i in range(3)])
    ck.check("RMSNorm", close(rms_norm(x, w, 1e-5), want))


def selftest_optimizer(ck):
    """Hand AdamW + clipping + schedule == torch.optim.AdamW + clip_grad_norm_ + LambdaLR,
    and the schedule against values written out from the doc."""
    tc = TrainConfig({"steps": 10, "lr": 0.5, "warmup_steps": 4, "lr_scheduler": "cosine"})
    want = [0.125, 0.25, 0.375, 0.5] + [0.5 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    tl = TrainConfig({"steps": 10, "lr": 0.5, "warmup_steps": 4, "lr_scheduler": "linear"})
    want_l = [0.125, 0.25, 0.375, 0.5] + [0.5 * (1 - k / 6) for k in range(6)]
    tcst = TrainConfig({"steps": 3, "lr": 0.5, "warmup_steps": 0, "lr_scheduler": "constant"})
    ck.check("lr schedule (warmup, cosine, linear, constant)",
             all(abs(lr_at(tc, s) - want[s]) < 1e-15 for s in range(10))
             and all(abs(lr_at(tl, s) - want_l[s]) < 1e-15 for s in range(10))
             and [lr_at(tcst, s) for s in range(3)] == [0.5] * 3)

    gen = torch.Generator().manual_seed(7)
    hf = random_config(gen, num_attention_heads=4, num_key_value_heads=2)
    cfg = ModelConfig(hf)
    lcfg = LoraConfig({"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj", "lm_head"]})
    base, lora = random_weights(cfg, lcfg, gen)
    model = LlamaLora(cfg, lcfg, base)
    for sched, clip in (("cosine", 0.05), ("linear", None), ("constant", 1e9)):
        tc = TrainConfig({"steps": 6, "grad_accum": 2, "lr": 3e-2, "warmup_steps": 2, "lr_scheduler": sched,
                          "weight_decay": 0.1, "adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6,
                          "max_grad_norm": clip})
        ids, labels = random_data(cfg, gen, (12, 2, 5))
        l1, n1, f1 = train(model, lora, tc, ids, labels)
        l2, n2, f2 = train(model, lora, tc, ids, labels, use_torch_optim=True)
        err = max(float((f1[n] - f2[n]).abs().max()) for n in f1)
        moved = max(float((f1[n] - lora[n]).abs().max()) for n in f1)
        clipped = sum(n > clip for n in n1) if clip else 0
        ck.check(f"hand AdamW == torch.optim.AdamW ({sched}, clip={clip})",
                 err < 1e-12 and moved > 1e-3 and max(abs(a - b) for a, b in zip(l1 + n1, l2 + n2)) < 1e-12
                 and (clip != 0.05 or clipped == tc.steps),
                 f"(max diff {err:.1e}, moved {moved:.1e}, clipped steps {clipped})")


def selftest_roundtrip(ck):
    """make-case -> run -> compare passes; perturbations, missing and extra tensors fail."""
    sink = open(os.devnull, "w")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, train_over in (("tiny-gqa", None), ("tiny-llama3", None),
                                   ("tiny-mha", {"steps": 4, "grad_accum": 2, "lr": 1e-2, "warmup_steps": 1,
                                                 "lr_scheduler": "linear", "weight_decay": 0.01,
                                                 "max_grad_norm": 1.0})):
            case = os.path.join(tmp, preset + ".safetensors")
            res = os.path.join(tmp, preset + ".result.safetensors")
            make_case(case, preset, seed=5, train_over=train_over)
            rc = cmd_run(case, res)
            ck.check(f"round trip {preset}: compare own result passes",
                     rc == 0 and cmd_compare(case, res, out=sink) == 0)
            good, _ = safetensors_io.read(res)
            c = load_case(case)
            key = sorted(n for n in good if n.startswith("grad.") or n.startswith("final."))[0]

            def variant(name, tensors, want_rc):
                path = os.path.join(tmp, "bad.safetensors")
                safetensors_io.write(path, tensors)
                rc = cmd_compare(case, path, out=sink)
                ck.check(f"round trip {preset}: {name} -> exit {want_rc}", rc == want_rc, f"(got {rc})")

            bad = dict(good)
            arr = good[key].copy()
            j = np.unravel_index(np.argmax(np.abs(arr)), arr.shape)
            grow = 1 + 3 * tolerance_for(key, c)  # three times what the case allows
            arr[j] *= grow
            bad[key] = arr
            variant(f"{key} max element x{grow:.4g}", bad, 1)
            bad = {n: a for n, a in good.items() if n != key}
            variant(f"missing {key}", bad, 1)
            bad = dict(good, **{"grad.bogus": np.zeros(3, np.float32)})
            variant("extra tensor", bad, 1)
            grow = 1 + 3 * tolerance_for("loss", c)
            bad = dict(good, loss=good["loss"] * grow)
            variant(f"loss x{grow:.4g}", bad, 1)
            bad = dict(good, loss=np.array([np.nan], np.float32))
            variant("NaN loss", bad, 1)
            bad = dict(good, loss=good["loss"].reshape(()))
            variant("loss shaped () not (1)", bad, 1)
            if "step_loss" in good:
                for name in ("step_loss", "grad_norm"):
                    arr = good[name].copy()
                    arr[-1] *= 1.005
                    variant(f"last {name} +0.5%", dict(good, **{name: arr}), 1)
        # A case with dropout cannot be compared: refused as malformed.
        tensors, meta = safetensors_io.read(case)
        lora_d = json.loads(meta["lora"])
        lora_d["dropout"] = 0.1
        dropout_case = os.path.join(tmp, "dropout.safetensors")
        safetensors_io.write(dropout_case, tensors, dict(meta, lora=json.dumps(lora_d)))
        rc = cmd_compare(dropout_case, res, out=sink)
        ck.check("dropout > 0 case -> exit 2", rc == 2, f"(got {rc})")
        with open(os.path.join(tmp, "garbage.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        rc = cmd_compare(case, os.path.join(tmp, "garbage.safetensors"), out=sink)
        ck.check("malformed result -> exit 2", rc == 2, f"(got {rc})")
        rc = cmd_compare(os.path.join(tmp, "missing.safetensors"), res, out=sink)
        ck.check("missing case -> exit 2", rc == 2, f"(got {rc})")
        # The CLI itself, once, through a real process.
        script = os.path.abspath(__file__)
        case = os.path.join(tmp, "cli.safetensors")
        res = os.path.join(tmp, "cli.result.safetensors")
        rcs = [subprocess.run([sys.executable, script] + args, stdout=subprocess.DEVNULL).returncode
               for args in (["make-case", case, "--seed", "3", "--config", "tiny-mha", "--targets", "all",
                             "--steps", "2", "--lr", "1e-2"],
                            ["run", case, res], ["compare", case, res])]
        ck.check("CLI make-case / run / compare", rcs == [0, 0, 0], f"(exit codes {rcs})")
    sink.close()


def selftest_float32_attainable(ck):
    """The same model run in float32 (as the C engine computes) must pass the contract's
    tolerances against float64, or the tolerances would be unreachable for any engine."""
    sink = open(os.devnull, "w")
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (0, 20):
            case = os.path.join(tmp, "f32.safetensors")
            make_case(case, "tiny-llama3", seed=11,
                      train_over={"steps": steps, "lr": 1e-3, "warmup_steps": 2, "lr_scheduler": "cosine",
                                  "weight_decay": 0.01, "max_grad_norm": 1.0})
            c = load_case(case)
            expected = compute_result(c)
            c.base = {n: t.float() for n, t in c.base.items()}
            c.lora_init = {n: t.float() for n, t in c.lora_init.items()}
            got = {n: a.astype(np.float32) for n, a in compute_result(c).items()}
            worst = max(relative_error(got[n], expected[n]) / tolerance_for(n, c) for n in expected)
            ck.check(f"float32 model within tolerance of float64 (steps={steps})",
                     compare_results(expected, got, "float32 run", c, out=sink),
                     f"(worst err/tol {worst:.1e})")
    sink.close()


def cmd_selftest():
    torch.manual_seed(0)
    start = time.time()
    ck = Checker()
    selftest_gradients(ck)
    selftest_dora(ck)
    selftest_properties(ck)
    selftest_optimizer(ck)
    selftest_roundtrip(ck)
    selftest_float32_attainable(ck)
    print(f"selftest: {ck.failures} failure(s) in {time.time() - start:.1f} s")
    return 1 if ck.failures else 0


# ---------------------------------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compare", help="compare a C result with the reference")
    p.add_argument("case")
    p.add_argument("result")
    p = sub.add_parser("run", help="write the reference's own result file")
    p.add_argument("case")
    p.add_argument("out")
    sub.add_parser("selftest", help="verify the reference itself")
    p = sub.add_parser("make-case", help="write a random case file")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="tiny-gqa", choices=sorted(PRESETS))
    p.add_argument("--targets", help="comma list of target modules, or 'qv' / 'all'")
    p.add_argument("--r", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--scheduler", default="constant", choices=TrainConfig.SCHEDULERS)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float)
    p.add_argument("--data", help="M,B,T micro-batches, batch, sequence length")
    args = ap.parse_args(argv)

    if args.cmd == "compare":
        return cmd_compare(args.case, args.result)
    if args.cmd == "run":
        return cmd_run(args.case, args.out)
    if args.cmd == "selftest":
        return cmd_selftest()
    lora_over = {}
    if args.targets:
        named = {"qv": ["q_proj", "v_proj"], "all": list(ALL_TARGETS)}
        lora_over["target_modules"] = named.get(args.targets, args.targets.split(","))
    if args.r is not None:
        lora_over["r"] = args.r
    if args.alpha is not None:
        lora_over["alpha"] = args.alpha
    if args.rslora:
        lora_over["use_rslora"] = True
    train_over = {"steps": args.steps, "grad_accum": args.grad_accum, "lr": args.lr,
                  "warmup_steps": args.warmup_steps, "lr_scheduler": args.scheduler,
                  "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm}
    data = tuple(int(v) for v in args.data.split(",")) if args.data else None
    try:
        make_case(args.out, args.config, args.seed, train_over, lora_over, data)
    except CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
