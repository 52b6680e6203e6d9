#include "gradcheck.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "f64_llama.h"

struct loss_ctx {
    struct f64_llama *f;
    gradcheck_loss_fn loss;
    void *user;
};
static double loss_of(void *ctx, const double *params) {
    struct loss_ctx *c = ctx;
    (void)params; /* f->params is the vector being perturbed */
    return c->loss(c->user, c->f);
}

struct mean_ce {
    const struct lorad_batch *b;
    double denominator;
};
static double mean_ce_of(void *ctx, const struct f64_llama *f) {
    const struct mean_ce *c = ctx;
    return f64_llama_loss_sum(f, c->b) / c->denominator;
}

double gradcheck_model_bound(const struct lorad_llama_config *c, int64_t tokens, bool dora) {
    /* The deepest parameter (layer 0's q_proj) sits behind the loss, the LM head, the final norm,
     * and per layer up to 12 stages (down, SwiGLU, gate/up, norm, o, PV, softmax, QK^T, RoPE,
     * q/k/v, norm, and the residual sum), plus its own A/B product; the longest sum is over the
     * widest dimension or the batch's tokens (the LoRA weight gradients sum over tokens). DoRA
     * adds one stage to each of a layer's four linear stages and to the head: the row norm its
     * scale divides by (and in backward the recomputed W x + scale B A x). */
    int stages = 4 + (dora ? 16 : 12) * c->n_layers + (dora ? 3 : 2);
    int64_t n = c->dim;
    int64_t widths[] = {c->hidden_dim, c->vocab_size, (int64_t)c->n_heads * c->head_dim, tokens};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        if (widths[i] > n) n = widths[i];
    return f32_chain_error_bound(stages, n);
}

int gradcheck_model(struct gradcheck_report *ret_report, struct lorad_model *m, const struct lorad_base_weights *w,
                    const struct lorad_lora_config *lc, uint64_t seed, uint64_t counter, const struct lorad_batch *b,
                    int64_t denominator, int stride) {
    struct mean_ce ctx = {b, (double)denominator};
    return gradcheck_model_loss(ret_report, m, w, lc, seed, counter, mean_ce_of, &ctx, (int64_t)b->B * b->T, stride);
}

int gradcheck_model_loss(struct gradcheck_report *ret_report, struct lorad_model *m, const struct lorad_base_weights *w,
                         const struct lorad_lora_config *lc, uint64_t seed, uint64_t counter, gradcheck_loss_fn loss,
                         void *ctx, int64_t tokens, int stride) {
    struct f64_llama f;
    int r = f64_llama_init(&f, m, w, lc, seed);
    if (r < 0) return r;
    f.counter = counter;
    const struct lorad_llama_config *c = &w->cfg;
    const float *grad = lorad_model_grads(m, NULL);
    double bound = gradcheck_model_bound(c, tokens, lc->use_dora);
    /* Step: the parameters are O(0.1-1). With Richardson extrapolation the truncation error is
     * O(h^4 |L^(5)|) ~ 1e-16 and the float64 rounding ~1e-16 |L| / h ~ 1e-12, both reported per
     * probe by the difference estimate and added to the tolerance. */
    const double h = 1e-4;
    struct loss_ctx lc_ctx = {&f, loss, ctx};
    struct gradcheck_report rep = {0};
    for (int t = 0; t < lorad_model_n_lora_tensors(m); t++) {
        const struct lorad_lora_tensor *lt = lorad_model_lora_tensor(m, t);
        int64_t cnt = lt->rows * lt->cols, np = 0;
        int64_t *idx = malloc(sizeof(int64_t) * (size_t)(cnt / stride + 3));
        double *ref = malloc(sizeof(double) * (size_t)(cnt / stride + 3)), *err = malloc(sizeof(double) * (size_t)(cnt / stride + 3));
        if (!idx || !ref || !err) {
            free(idx); free(ref); free(err);
            f64_llama_free(&f);
            return -ENOMEM;
        }
        for (int64_t i = 0; i < cnt; i += stride) idx[np++] = i;
        if (idx[np - 1] != cnt - 1) idx[np++] = cnt - 1;
        double scale = 0;
        for (int64_t p = 0; p < np; p++) {
            ref[p] = f64_central_difference(loss_of, &lc_ctx, f.params, (int64_t)lt->offset + idx[p], h, &err[p]);
            scale = fmax(scale, fabs(ref[p]));
        }
        for (int64_t p = 0; p < np; p++) {
            double a = grad[lt->offset + (size_t)idx[p]];
            double tol = bound * scale + 2 * err[p] + 1e-12;
            double ratio = fabs(a - ref[p]) / tol;
            if (ratio > rep.worst || rep.probes == 0) {
                rep.worst = ratio;
                snprintf(rep.worst_what, sizeof rep.worst_what,
                         "%s[%lld]: analytic %.9g, float64 reference %.9g, tolerance %.3g (bound %.3g x tensor "
                         "scale %.3g, difference error %.3g)",
                         lt->name, (long long)idx[p], a, ref[p], tol, bound, scale, err[p]);
            }
            rep.probes++;
            rep.max_abs_grad = fmax(rep.max_abs_grad, fabs(ref[p]));
        }
        free(idx); free(ref); free(err);
    }
    f64_llama_free(&f);
    *ret_report = rep;
    return 0;
}
