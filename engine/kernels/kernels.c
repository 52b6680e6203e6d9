#include "kernels.h"

#include "gemm.h"
#include "vec_math.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* ---- static row partitioning over the pool ---- */

typedef void (*rows_fn)(void *ctx, int64_t begin, int64_t end, int tid);
struct rows_job {
    rows_fn fn;
    void *ctx;
    int64_t n;
};
static void rows_thread(void *c, int tid, int nt) {
    struct rows_job *j = c;
    int64_t b, e;
    lorad_pool_slice(j->n, tid, nt, 1, &b, &e);
    if (e > b) j->fn(j->ctx, b, e, tid);
}
static void par_rows(struct lorad_pool *pool, int64_t n, rows_fn fn, void *ctx) {
    if (!pool || lorad_pool_size(pool) == 1 || n < 2) {
        if (n > 0) fn(ctx, 0, n, 0);
        return;
    }
    struct rows_job j = {fn, ctx, n};
    lorad_pool_run(pool, rows_thread, &j);
}


/* ---- embedding ---- */

struct emb_ctx {
    float *out;
    const int32_t *tokens;
    const struct lorad_tensor *E;
    int64_t C;
};
static void emb_rows(void *c, int64_t b, int64_t e, int tid) {
    struct emb_ctx *x = c;
    for (int64_t i = b; i < e; i++) lorad_tensor_rows_f32(x->out + i * x->C, x->E, x->tokens[i], 1, 0, x->C);
}
void lorad_embedding_forward(struct lorad_pool *pool, float *out, const int32_t *tokens, const struct lorad_tensor *E,
                             int64_t N, int64_t C) {
    struct emb_ctx x = {out, tokens, E, C};
    par_rows(pool, N, emb_rows, &x);
}

/* ---- RMSNorm ---- */

struct rms_ctx {
    float *out, *dx;
    float *inv;
    const float *x, *w, *dout, *cinv;
    float eps;
    int64_t C;
};
static void rms_fwd_rows(void *c, int64_t b, int64_t e, int tid) {
    struct rms_ctx *r = c;
    int64_t C = r->C;
    for (int64_t i = b; i < e; i++) {
        const float *x = r->x + i * C;
        float *o = r->out + i * C;
        float ss = 0.0f;
        for (int64_t j = 0; j < C; j++) ss += x[j] * x[j];
        float inv = 1.0f / sqrtf(ss / (float)C + r->eps);
        r->inv[i] = inv;
        for (int64_t j = 0; j < C; j++) o[j] = x[j] * inv * r->w[j];
    }
}
void lorad_rmsnorm_forward(struct lorad_pool *pool, float *out, float *inv, const float *x, const float *w, float eps,
                           int64_t N, int64_t C) {
    struct rms_ctx r = {.out = out, .inv = inv, .x = x, .w = w, .eps = eps, .C = C};
    par_rows(pool, N, rms_fwd_rows, &r);
}
static void rms_bwd_rows(void *c, int64_t b, int64_t e, int tid) {
    struct rms_ctx *r = c;
    int64_t C = r->C;
    for (int64_t i = b; i < e; i++) {
        const float *x = r->x + i * C, *d = r->dout + i * C;
        float inv = r->cinv[i], dot = 0.0f;
        for (int64_t j = 0; j < C; j++) dot += d[j] * r->w[j] * x[j];
        /* d/dx of x*inv*w: inv*(dy*w) - x*inv^3*mean(dy*w*x) */
        float k = dot * inv * inv * inv / (float)C;
        float *dx = r->dx + i * C;
        for (int64_t j = 0; j < C; j++) dx[j] += inv * d[j] * r->w[j] - k * x[j];
    }
}
void lorad_rmsnorm_backward(struct lorad_pool *pool, float *dx, const float *dout, const float *x, const float *inv,
                            const float *w, int64_t N, int64_t C) {
    struct rms_ctx r = {.dx = dx, .dout = dout, .x = x, .cinv = inv, .w = w, .C = C};
    par_rows(pool, N, rms_bwd_rows, &r);
}
void lorad_rmsnorm_forward_ref(float *out, float *inv, const float *x, const float *w, float eps, int64_t N, int64_t C) {
    for (int64_t i = 0; i < N; i++) {
        double ss = 0;
        for (int64_t j = 0; j < C; j++) ss += (double)x[i * C + j] * x[i * C + j];
        double iv = 1.0 / sqrt(ss / C + eps);
        inv[i] = (float)iv;
        for (int64_t j = 0; j < C; j++) out[i * C + j] = (float)(x[i * C + j] * iv * w[j]);
    }
}
void lorad_rmsnorm_backward_ref(float *dx, const float *dout, const float *x, const float *inv, const float *w,
                                int64_t N, int64_t C) {
    for (int64_t i = 0; i < N; i++) {
        double iv = inv[i], dot = 0;
        for (int64_t j = 0; j < C; j++) dot += (double)dout[i * C + j] * w[j] * x[i * C + j];
        for (int64_t j = 0; j < C; j++)
            dx[i * C + j] += (float)(iv * dout[i * C + j] * w[j] - dot * iv * iv * iv / C * x[i * C + j]);
    }
}

/* ---- RoPE ---- */

void lorad_rope_inv_freq(double *inv_freq, const struct lorad_llama_config *cfg) {
    int half = cfg->head_dim / 2;
    const struct lorad_rope_scaling *rs = &cfg->rope_scaling;
    for (int i = 0; i < half; i++) {
        double f = pow((double)cfg->rope_theta, -(2.0 * i) / cfg->head_dim);
        if (rs->type == LORAD_ROPE_LLAMA3) {
            double orig = rs->original_max_position_embeddings;
            double low_wl = orig / rs->low_freq_factor, high_wl = orig / rs->high_freq_factor;
            double wl = 2.0 * M_PI / f;
            if (wl > low_wl) {
                f = f / rs->factor;
            } else if (wl >= high_wl) { /* medium band: interpolate between scaled and unscaled */
                double smooth = (orig / wl - rs->low_freq_factor) / (rs->high_freq_factor - rs->low_freq_factor);
                f = (1.0 - smooth) * f / rs->factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

void lorad_rope_tables(float *cos_t, float *sin_t, const struct lorad_llama_config *cfg, int64_t P) {
    int half = cfg->head_dim / 2;
    double inv[LORAD_MAX_HEAD_DIM / 2];
    lorad_rope_inv_freq(inv, cfg);
    for (int64_t p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            double a = (double)p * inv[i];
            cos_t[p * half + i] = (float)cos(a);
            sin_t[p * half + i] = (float)sin(a);
        }
}

struct rope_ctx {
    float *x;
    const int32_t *pos;
    const float *cos_t, *sin_t;
    int nh, hd;
    float sign; /* +1 forward, -1 backward (transposed rotation) */
};
static void rope_rows(void *c, int64_t b, int64_t e, int tid) {
    struct rope_ctx *r = c;
    int half = r->hd / 2;
    for (int64_t i = b; i < e; i++) {
        const float *cs = r->cos_t + (int64_t)r->pos[i] * half, *sn = r->sin_t + (int64_t)r->pos[i] * half;
        for (int h = 0; h < r->nh; h++) {
            float *x = r->x + (i * r->nh + h) * r->hd;
            for (int j = 0; j < half; j++) {
                float x1 = x[j], x2 = x[j + half], s = r->sign * sn[j];
                x[j] = x1 * cs[j] - x2 * s;
                x[j + half] = x2 * cs[j] + x1 * s;
            }
        }
    }
}
void lorad_rope_forward(struct lorad_pool *pool, float *x, const int32_t *pos, const float *cos_t, const float *sin_t,
                        int64_t N, int n_heads, int head_dim) {
    struct rope_ctx r = {x, pos, cos_t, sin_t, n_heads, head_dim, 1.0f};
    par_rows(pool, N, rope_rows, &r);
}
void lorad_rope_backward(struct lorad_pool *pool, float *dx, const int32_t *pos, const float *cos_t,
                         const float *sin_t, int64_t N, int n_heads, int head_dim) {
    struct rope_ctx r = {dx, pos, cos_t, sin_t, n_heads, head_dim, -1.0f};
    par_rows(pool, N, rope_rows, &r);
}
void lorad_rope_forward_ref(float *x, const int32_t *pos, const struct lorad_llama_config *cfg, int64_t N, int n_heads) {
    int hd = cfg->head_dim, half = hd / 2;
    double inv[LORAD_MAX_HEAD_DIM / 2];
    lorad_rope_inv_freq(inv, cfg);
    for (int64_t i = 0; i < N; i++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (i * n_heads + h) * hd;
            for (int j = 0; j < half; j++) {
                double a = pos[i] * inv[j], x1 = v[j], x2 = v[j + half];
                v[j] = (float)(x1 * cos(a) - x2 * sin(a));
                v[j + half] = (float)(x2 * cos(a) + x1 * sin(a));
            }
        }
}

/* ---- attention ---- */

/* Per thread: scores P and dP (LORAD_ATTN_BLOCK, T) and D (LORAD_ATTN_BLOCK), then the work of
 * the engine's GEMM kernel. */
static int64_t scores_floats(int T) { return 2 * (int64_t)LORAD_ATTN_BLOCK * T + LORAD_ATTN_BLOCK; }

int64_t lorad_attention_scratch_floats(int T) { return scores_floats(T) + (int64_t)LORAD_SGEMM_AVX512_WORK_FLOATS; }

static float *gemm_work(float *scratch, int T) { return scratch + scores_floats(T); }

struct attn_ctx {
    float *const *scratch;
    float *out, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *cout, *clse;
    const int32_t *seg;
    struct lorad_attn_shape s;
};

/* Scores of query rows [i0, i1) against keys [j0, i1) for head h of row b, scaled, masked to
 * [seg, t] with -inf. S (i1-i0, i1-j0). */
static void block_scores(float *S, const struct attn_ctx *a, int b, int h, int i0, int i1, int j0, float *work) {
    const struct lorad_attn_shape *s = &a->s;
    int g = h / (s->H / s->KV), nk = i1 - j0, ldq = s->H * s->hd, ldk = s->KV * s->hd;
    float scale = 1.0f / sqrtf((float)s->hd);
    const float *Q = a->q + ((int64_t)b * s->T + i0) * ldq + h * s->hd;
    const float *K = a->k + ((int64_t)b * s->T + j0) * ldk + g * s->hd;
    lorad_sgemm_1t(false, true, i1 - i0, nk, s->hd, scale, Q, ldq, K, ldk, 0.0f, S, nk, work);
    for (int i = i0; i < i1; i++) {
        float *row = S + (int64_t)(i - i0) * nk;
        int lo = a->seg[(int64_t)b * s->T + i] - j0;
        for (int j = 0; j < lo; j++) row[j] = -INFINITY;
        for (int j = i - j0 + 1; j < nk; j++) row[j] = -INFINITY;
    }
}

static int block_key_start(const struct attn_ctx *a, int b, int i0, int i1) {
    int j0 = i0;
    for (int i = i0; i < i1; i++) {
        int sg = a->seg[(int64_t)a->s.T * b + i];
        if (sg < j0) j0 = sg;
    }
    return j0;
}

static void attn_fwd_tasks(void *c, int64_t tb, int64_t te, int tid) {
    struct attn_ctx *a = c;
    const struct lorad_attn_shape *s = &a->s;
    float *S = a->scratch[tid], *work = gemm_work(S, s->T);
    int ldq = s->H * s->hd, ldk = s->KV * s->hd;
    for (int64_t task = tb; task < te; task++) {
        int b = (int)(task / s->H), h = (int)(task % s->H), g = h / (s->H / s->KV);
        for (int i0 = 0; i0 < s->T; i0 += LORAD_ATTN_BLOCK) {
            int i1 = i0 + LORAD_ATTN_BLOCK < s->T ? i0 + LORAD_ATTN_BLOCK : s->T;
            int j0 = block_key_start(a, b, i0, i1), nk = i1 - j0;
            block_scores(S, a, b, h, i0, i1, j0, work);
            for (int i = i0; i < i1; i++) {
                float *row = S + (int64_t)(i - i0) * nk, mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j < nk; j++) mx = row[j] > mx ? row[j] : mx;
                lorad_exp_shift_row(row, nk, mx);
                for (int j = 0; j < nk; j++) sum += row[j];
                float r = 1.0f / sum;
                for (int j = 0; j < nk; j++) row[j] *= r;
                a->lse[((int64_t)b * s->H + h) * s->T + i] = mx + logf(sum);
            }
            const float *V = a->v + ((int64_t)b * s->T + j0) * ldk + g * s->hd;
            float *O = a->out + ((int64_t)b * s->T + i0) * ldq + h * s->hd;
            lorad_sgemm_1t(false, false, i1 - i0, s->hd, nk, 1.0f, S, nk, V, ldk, 0.0f, O, ldq, work);
        }
    }
}

void lorad_attention_forward(struct lorad_pool *pool, float *const *scratch, float *out, float *lse, const float *q,
                             const float *k, const float *v, const int32_t *seg, struct lorad_attn_shape s) {
    struct attn_ctx a = {.scratch = scratch, .out = out, .lse = lse, .q = q, .k = k, .v = v, .seg = seg, .s = s};
    par_rows(pool, (int64_t)s.B * s.H, attn_fwd_tasks, &a);
}

/* One task = one (row b, kv head g) with all its query heads, so dk/dv have a single writer. */
static void attn_bwd_tasks(void *c, int64_t tb, int64_t te, int tid) {
    struct attn_ctx *a = c;
    const struct lorad_attn_shape *s = &a->s;
    int rep = s->H / s->KV, ldq = s->H * s->hd, ldk = s->KV * s->hd;
    float scale = 1.0f / sqrtf((float)s->hd);
    float *P = a->scratch[tid], *dP = P + (int64_t)LORAD_ATTN_BLOCK * s->T, *D = dP + (int64_t)LORAD_ATTN_BLOCK * s->T;
    float *work = gemm_work(P, s->T);
    for (int64_t task = tb; task < te; task++) {
        int b = (int)(task / s->KV), g = (int)(task % s->KV);
        for (int t = 0; t < s->T; t++) {
            memset(a->dk + ((int64_t)b * s->T + t) * ldk + g * s->hd, 0, sizeof(float) * s->hd);
            memset(a->dv + ((int64_t)b * s->T + t) * ldk + g * s->hd, 0, sizeof(float) * s->hd);
        }
        const float *Kb = a->k + (int64_t)b * s->T * ldk + g * s->hd, *Vb = a->v + (int64_t)b * s->T * ldk + g * s->hd;
        float *dKb = a->dk + (int64_t)b * s->T * ldk + g * s->hd, *dVb = a->dv + (int64_t)b * s->T * ldk + g * s->hd;
        for (int h = g * rep; h < (g + 1) * rep; h++) {
            for (int i0 = 0; i0 < s->T; i0 += LORAD_ATTN_BLOCK) {
                int i1 = i0 + LORAD_ATTN_BLOCK < s->T ? i0 + LORAD_ATTN_BLOCK : s->T, nb = i1 - i0;
                int j0 = block_key_start(a, b, i0, i1), nk = i1 - j0;
                block_scores(P, a, b, h, i0, i1, j0, work);
                const float *dO = a->dout + ((int64_t)b * s->T + i0) * ldq + h * s->hd;
                const float *O = a->cout + ((int64_t)b * s->T + i0) * ldq + h * s->hd;
                const float *Q = a->q + ((int64_t)b * s->T + i0) * ldq + h * s->hd;
                for (int i = 0; i < nb; i++) {
                    float l = a->clse[((int64_t)b * s->H + h) * s->T + i0 + i], *row = P + (int64_t)i * nk;
                    lorad_exp_shift_row(row, nk, l);
                    float d = 0.0f;
                    for (int x = 0; x < s->hd; x++) d += dO[(int64_t)i * ldq + x] * O[(int64_t)i * ldq + x];
                    D[i] = d;
                }
                /* dP = dO V^T */
                lorad_sgemm_1t(false, true, nb, nk, s->hd, 1.0f, dO, ldq, Vb + (int64_t)j0 * ldk, ldk,
                               0.0f, dP, nk, work);
                /* dV += P^T dO */
                lorad_sgemm_1t(true, false, nk, s->hd, nb, 1.0f, P, nk, dO, ldq, 1.0f,
                               dVb + (int64_t)j0 * ldk, ldk, work);
                for (int i = 0; i < nb; i++) {
                    float *pr = P + (int64_t)i * nk, *dr = dP + (int64_t)i * nk;
                    for (int j = 0; j < nk; j++) dr[j] = pr[j] * (dr[j] - D[i]);
                }
                /* dQ = scale dS K ; dK += scale dS^T Q */
                lorad_sgemm_1t(false, false, nb, s->hd, nk, scale, dP, nk, Kb + (int64_t)j0 * ldk, ldk,
                               0.0f, a->dq + ((int64_t)b * s->T + i0) * ldq + h * s->hd, ldq, work);
                lorad_sgemm_1t(true, false, nk, s->hd, nb, scale, dP, nk, Q, ldq, 1.0f,
                               dKb + (int64_t)j0 * ldk, ldk, work);
            }
        }
    }
}

void lorad_attention_backward(struct lorad_pool *pool, float *const *scratch, float *dq, float *dk, float *dv,
                              const float *dout, const float *q, const float *k, const float *v, const float *out,
                              const float *lse, const int32_t *seg, struct lorad_attn_shape s) {
    struct attn_ctx a = {.scratch = scratch, .dq = dq, .dk = dk, .dv = dv, .dout = dout, .q = q, .k = k, .v = v,
                         .cout = out, .clse = lse, .seg = seg, .s = s};
    par_rows(pool, (int64_t)s.B * s.KV, attn_bwd_tasks, &a);
}

void lorad_attention_forward_ref(float *out, const float *q, const float *k, const float *v, const int32_t *seg,
                                 struct lorad_attn_shape s) {
    int ldq = s.H * s.hd, ldk = s.KV * s.hd;
    double w[4096];
    assert(s.T <= 4096);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.H; h++) {
            int g = h / (s.H / s.KV);
            for (int t = 0; t < s.T; t++) {
                const float *qi = q + ((int64_t)b * s.T + t) * ldq + h * s.hd;
                int lo = seg[b * s.T + t];
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= t; j++) {
                    const float *kj = k + ((int64_t)b * s.T + j) * ldk + g * s.hd;
                    double d = 0;
                    for (int x = 0; x < s.hd; x++) d += (double)qi[x] * kj[x];
                    w[j] = d / sqrt((double)s.hd);
                    if (w[j] > mx) mx = w[j];
                }
                for (int j = lo; j <= t; j++) sum += (w[j] = exp(w[j] - mx));
                for (int x = 0; x < s.hd; x++) {
                    double o = 0;
                    for (int j = lo; j <= t; j++) o += w[j] / sum * v[((int64_t)b * s.T + j) * ldk + g * s.hd + x];
                    out[((int64_t)b * s.T + t) * ldq + h * s.hd + x] = (float)o;
                }
            }
        }
}

/* ---- SwiGLU ---- */

struct swiglu_ctx {
    float *out, *dgate, *dup;
    const float *gate, *up, *dout;
};
#define SWIGLU_CHUNK 4096
static void swiglu_fwd_rows(void *c, int64_t b, int64_t e, int tid) {
    struct swiglu_ctx *x = c;
    lorad_swiglu_row(x->out + b * SWIGLU_CHUNK, x->gate + b * SWIGLU_CHUNK, x->up + b * SWIGLU_CHUNK,
               (e - b) * SWIGLU_CHUNK);
}
static void swiglu_bwd_rows(void *c, int64_t b, int64_t e, int tid) {
    struct swiglu_ctx *x = c;
    int64_t o = b * SWIGLU_CHUNK;
    lorad_swiglu_back_row(x->dgate + o, x->dup + o, x->dout + o, x->gate + o, x->up + o, (e - b) * SWIGLU_CHUNK);
}
void lorad_swiglu_forward(struct lorad_pool *pool, float *out, const float *gate, const float *up, int64_t n) {
    struct swiglu_ctx x = {.out = out, .gate = gate, .up = up};
    int64_t full = n / SWIGLU_CHUNK;
    par_rows(pool, full, swiglu_fwd_rows, &x);
    lorad_swiglu_row(out + full * SWIGLU_CHUNK, gate + full * SWIGLU_CHUNK, up + full * SWIGLU_CHUNK, n - full * SWIGLU_CHUNK);
}
void lorad_swiglu_backward(struct lorad_pool *pool, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int64_t n) {
    struct swiglu_ctx x = {.dgate = dgate, .dup = dup, .gate = gate, .up = up, .dout = dout};
    int64_t full = n / SWIGLU_CHUNK;
    par_rows(pool, full, swiglu_bwd_rows, &x);
    int64_t o = full * SWIGLU_CHUNK;
    lorad_swiglu_back_row(dgate + o, dup + o, dout + o, gate + o, up + o, n - o);
}
void lorad_swiglu_forward_ref(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)((double)gate[i] / (1.0 + exp(-(double)gate[i])) * up[i]);
}

/* ---- cross-entropy ---- */

struct ce_ctx {
    float *logits;
    double *row_loss;
    uint8_t *row_correct;
    const int32_t *labels;
    float scale;
    bool grad;
    int64_t V;
};
static void ce_rows(void *c, int64_t b, int64_t e, int tid) {
    struct ce_ctx *x = c;
    int64_t V = x->V;
    for (int64_t i = b; i < e; i++) {
        float *l = x->logits + i * V;
        int32_t y = x->labels[i];
        if (y == LORAD_IGNORE_INDEX) {
            x->row_loss[i] = 0.0;
            x->row_correct[i] = 0;
            if (x->grad) memset(l, 0, sizeof(float) * (size_t)V);
            continue;
        }
        float mx = l[0];
        int64_t arg = 0;
        for (int64_t j = 1; j < V; j++)
            if (l[j] > mx) { mx = l[j]; arg = j; }
        float ly = l[y];
        double sum = 0.0;
        lorad_exp_shift_row(l, V, mx); /* logits are scratch: keep the exponentials for the gradient */
        for (int64_t j = 0; j < V; j++) sum += l[j];
        x->row_loss[i] = (double)mx + log(sum) - (double)ly;
        x->row_correct[i] = arg == y;
        if (x->grad) {
            float r = (float)(1.0 / sum) * x->scale;
            for (int64_t j = 0; j < V; j++) l[j] *= r;
            l[y] -= x->scale;
        }
    }
}
void lorad_crossentropy_forward_backward(struct lorad_pool *pool, float *logits, double *row_loss, uint8_t *row_correct,
                                         const int32_t *labels, float grad_scale, bool grad, int64_t N, int64_t V) {
    struct ce_ctx x = {logits, row_loss, row_correct, labels, grad_scale, grad, V};
    par_rows(pool, N, ce_rows, &x);
}
void lorad_crossentropy_ref(double *row_loss, float *dlogits, const float *logits, const int32_t *labels,
                            float grad_scale, int64_t N, int64_t V) {
    for (int64_t i = 0; i < N; i++) {
        const float *l = logits + i * V;
        if (labels[i] == LORAD_IGNORE_INDEX) {
            row_loss[i] = 0;
            for (int64_t j = 0; j < V; j++) dlogits[i * V + j] = 0;
            continue;
        }
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        for (int64_t j = 0; j < V; j++) sum += exp(l[j] - mx);
        row_loss[i] = mx + log(sum) - l[labels[i]];
        for (int64_t j = 0; j < V; j++)
            dlogits[i * V + j] = (float)((exp(l[j] - mx) / sum - (j == labels[i])) * grad_scale);
    }
}
