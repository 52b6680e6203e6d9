/* Temperature, then top-k, then top-p over the survivors, then one uniform draw. The candidates
 * are sorted only when a cut needs the order, and the probabilities are computed in double from
 * the largest logit so no exp overflows. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "rng.h"

struct candidate {
    float logit;
    int32_t id;
};

struct lorad_sampler {
    struct lorad_sampling opt;
    int vocab;
    struct candidate *cand; /* (vocab) scratch; NULL when greedy */
    double *prob;           /* (vocab) scratch; NULL when greedy */
};

/* Contract: opt is copied; the scratch rows are owned by the sampler. */
int lorad_sampler_new(struct lorad_sampler **ret, const struct lorad_sampling *opt, int vocab, struct lorad_error *err) {
    if (vocab < 1) return lorad_error_set(err, -EINVAL, "vocab", "the vocabulary is empty");
    if (!isfinite(opt->temperature) || opt->temperature < 0 || opt->temperature > LORAD_SAMPLER_MAX_TEMPERATURE)
        return lorad_error_set(err, -EINVAL, "temperature", "temperature must be in [0, %g], got %g",
                               LORAD_SAMPLER_MAX_TEMPERATURE, opt->temperature);
    if (opt->top_k < 0) return lorad_error_set(err, -EINVAL, "top_k", "top_k must be >= 0, got %d", opt->top_k);
    if (!(opt->top_p > 0 && opt->top_p <= 1))
        return lorad_error_set(err, -EINVAL, "top_p", "top_p must be in (0, 1], got %g", opt->top_p);
    if ((opt->top_k || opt->top_p < 1) && opt->temperature == 0)
        return lorad_error_set(err, -EINVAL, opt->top_k ? "top_k" : "top_p",
                               "%s needs a temperature above 0 (temperature 0 is greedy)", opt->top_k ? "top_k" : "top_p");
    struct lorad_sampler *s = calloc(1, sizeof *s);
    if (!s) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    s->opt = *opt;
    s->vocab = vocab;
    if (opt->temperature > 0) {
        s->cand = malloc((size_t)vocab * sizeof *s->cand);
        s->prob = malloc((size_t)vocab * sizeof *s->prob);
        if (!s->cand || !s->prob) {
            lorad_sampler_free(s);
            return lorad_error_set(err, -ENOMEM, "", "out of memory for a sampler over %d tokens", vocab);
        }
    }
    *ret = s;
    return 0;
}

void lorad_sampler_free(struct lorad_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->prob);
    free(s);
}

static int by_logit_desc(const void *pa, const void *pb) {
    const struct candidate *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int32_t argmax(const float *logits, int V) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

int32_t lorad_sampler_pick(struct lorad_sampler *s, const float *logits, int64_t step) {
    const struct lorad_sampling *o = &s->opt;
    if (o->temperature == 0) return argmax(logits, s->vocab);
    int n = s->vocab;
    for (int i = 0; i < n; i++) s->cand[i] = (struct candidate){logits[i], i};
    bool cut_k = o->top_k > 0 && o->top_k < n;
    if (cut_k || o->top_p < 1.0) {
        qsort(s->cand, (size_t)n, sizeof *s->cand, by_logit_desc);
        if (cut_k) n = o->top_k;
    }
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = s->cand[i].logit > mx ? s->cand[i].logit : mx;
    double total = 0;
    for (int i = 0; i < n; i++) total += s->prob[i] = exp(((double)s->cand[i].logit - mx) / o->temperature);
    if (o->top_p < 1.0) {
        /* Candidates are sorted: keep the shortest head whose probability reaches top_p. */
        double cum = 0;
        int keep = 0;
        while (keep < n && cum < o->top_p * total) cum += s->prob[keep++];
        n = keep > 0 ? keep : 1;
        total = 0;
        for (int i = 0; i < n; i++) total += s->prob[i];
    }
    double u = (double)(lorad_rng_u64(o->seed, 0x67656e, (uint64_t)step, 0, 0) >> 11) * 0x1.0p-53 * total;
    for (int i = 0; i < n; i++) {
        u -= s->prob[i];
        if (u < 0) return s->cand[i].id;
    }
    return s->cand[n - 1].id; /* rounding left u just above 0 */
}
