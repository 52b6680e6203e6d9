"""How far a float32 computation of a Llama model may be from the float64 value.

Each float32 stage that sums n terms (a dot product, a norm, a softmax) errs by at most
LAMBDA * sqrt(n) * u times the sum of the terms' magnitudes when the roundings behave as
independent mean-zero errors (Higham & Mary, "A New Approach to Probabilistic Rounding Error
Analysis", SIAM J. Sci. Comput. 41(5), 2019; with LAMBDA = 6 the bound fails by bad luck with
probability below 2n exp(-18)). With terms of mixed sign that sum exceeds the result by about
sqrt(n), so a stage is good to LAMBDA * n * u of its output's scale, and the errors of a chain of
stages add to first order. The same derivation is written out in tests/engine/f64_llama.c, whose
gradient checks use it. Both bounds are relative to the largest magnitude of the compared tensor.
No torch here, so scripts without it can use the bounds.
"""

U32 = 2.0 ** -24  # float32 unit roundoff
LAMBDA = 6.0


def _dims(cfg):
    """(layers, dim, intermediate, vocab, heads * head_dim) of a ModelConfig or an HF config dict."""
    if isinstance(cfg, dict):
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        return (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"],
                heads * head_dim)
    return cfg.layers, cfg.dim, cfg.hidden, cfg.vocab, cfg.heads * cfg.head_dim


def float32_bound(cfg, tokens, dora=False, residual=False):
    """The loss or a LoRA gradient: the deepest parameter (layer 0) sits behind the loss, the LM
    head, the final norm and 12 stages per layer (norm, q/k/v, RoPE, scores, softmax, values, o,
    residual, norm, gate/up, SwiGLU, down) plus its own A/B product; the widest sum is over the
    largest dimension, the vocabulary (the head's input gradient) or the step's tokens (the weight
    gradients sum over them). DoRA adds to each of a layer's four linear stages (q/k/v, o,
    gate/up, down) and to the head one more: the row norm its scale m/n divides by, and in
    backward the recomputed W x + scale B A x the magnitude's gradient sums. A residual base
    (PiSSA, OLoRA: W x - scale B0 A0 x computed as two terms) adds one stage to the same five."""
    layers, dim, hidden, vocab, qdim = _dims(cfg)
    per_layer, head = (16, 7) if dora else (12, 6)
    if residual:
        per_layer, head = per_layer + 4, head + 1
    return (head + per_layer * layers) * LAMBDA * max(dim, hidden, vocab, qdim, tokens) * U32


def float32_logits_bound(cfg, tokens):
    """The logits of a forward pass: 12 stages per layer, the final norm and the LM head; no sum
    runs over the vocabulary before the logits, attention sums over up to `tokens` positions."""
    layers, dim, hidden, _, qdim = _dims(cfg)
    return (2 + 12 * layers) * LAMBDA * max(dim, hidden, qdim, tokens) * U32
