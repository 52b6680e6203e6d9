#include "dpo.h"

#include <assert.h>
#include <errno.h>
#include <math.h>

/* -log sigmoid(z) = log(1 + exp(-z)), without overflow for either sign of z. */
static double neg_log_sigmoid(double z) { return z >= 0 ? log1p(exp(-z)) : -z + log1p(exp(z)); }

/* sigmoid(-z) = 1 / (1 + exp(z)), without overflow for either sign of z. */
static double sigmoid_neg(double z) {
    if (z >= 0) {
        double e = exp(-z);
        return e / (1.0 + e);
    }
    return 1.0 / (1.0 + exp(z));
}

void lorad_dpo_forward(struct lorad_dpo_sums *sums, double *ret_margin, const double *policy_ce, const double *ref_ce,
                       double beta, int n_pairs) {
    assert(n_pairs >= 0 && beta > 0);
    for (int i = 0; i < n_pairs; i++) {
        double chosen = beta * (ref_ce[2 * i] - policy_ce[2 * i]);
        double rejected = beta * (ref_ce[2 * i + 1] - policy_ce[2 * i + 1]);
        double z = chosen - rejected;
        ret_margin[i] = z;
        sums->loss += neg_log_sigmoid(z);
        sums->margin += z;
        sums->chosen += chosen;
        sums->rejected += rejected;
        sums->correct += z > 0;
        sums->pairs++;
    }
}

void lorad_dpo_backward(double *ret_dce, const double *margin, double beta, double scale, int n_pairs) {
    for (int i = 0; i < n_pairs; i++) {
        /* d loss / d z = -sigmoid(-z); d z / d ce_preferred = -beta, d z / d ce_non_preferred = +beta */
        double g = scale * beta * sigmoid_neg(margin[i]);
        ret_dce[2 * i] = g;
        ret_dce[2 * i + 1] = -g;
    }
}

/* The preferred rows' argmax hits and labels, added into *correct and *labels. */
static void count_preferred(const struct lorad_batch *b, const int64_t *row_correct, int64_t *correct,
                            int64_t *labels) {
    for (int i = 0; i < b->B; i += 2) {
        *correct += row_correct[i];
        *labels += lorad_count_labels(b->labels + (int64_t)i * b->T, b->T);
    }
}

struct weights_ctx {
    const double *ref_ce; /* (B) */
    double beta, scale;
    double *margin;       /* (B/2) */
    struct lorad_dpo_sums *sums;
};

/* lorad_row_weights_fn: d (scale * loss) / d (each row's CE sum), from the policy's CE sums of
 * the forward the backward differentiates. */
static int weights_of(void *ctx, const double *row_loss, int B, double *ret_weights) {
    struct weights_ctx *c = ctx;
    assert(B % 2 == 0);
    lorad_dpo_forward(c->sums, c->margin, row_loss, c->ref_ce, c->beta, B / 2);
    lorad_dpo_backward(ret_weights, c->margin, c->beta, c->scale, B / 2);
    return 0;
}

/* A DPO batch is whole pairs, and few enough rows for the per-row arrays on the stack (the job
 * spec's batch_size is at most 1024 pairs). */
#define MAX_ROWS 2048
static int check_pairs(const struct lorad_batch *b, struct lorad_error *err) {
    if (b->B < 2 || b->B % 2 || b->B > MAX_ROWS)
        return lorad_error_set(err, -EINVAL, "batch_size", "a DPO batch holds 1 to %d pairs of rows, got %d rows",
                               MAX_ROWS / 2, b->B);
    return 0;
}

int lorad_dpo_forward_backward(struct lorad_model *m, const struct lorad_batch *b, double beta, double scale,
                               struct lorad_dpo_sums *sums, int64_t *correct, int64_t *labels, struct lorad_error *err) {
    int r = check_pairs(b, err);
    if (r < 0) return r;
    int B = b->B;
    double ref_ce[B], policy_ce[B], margin[B / 2];
    int64_t row_correct[B];
    if ((r = lorad_model_eval_rows(m, b, false, ref_ce, NULL, err)) < 0) return r;
    struct weights_ctx ctx = {ref_ce, beta, scale, margin, sums};
    if ((r = lorad_model_forward_backward_rows(m, b, weights_of, &ctx, policy_ce, row_correct, err)) < 0) return r;
    count_preferred(b, row_correct, correct, labels);
    return 0;
}

int lorad_dpo_eval(struct lorad_model *m, const struct lorad_batch *b, double beta, struct lorad_dpo_sums *sums,
                   int64_t *correct, int64_t *labels, struct lorad_error *err) {
    int r = check_pairs(b, err);
    if (r < 0) return r;
    int B = b->B;
    double ref_ce[B], policy_ce[B], margin[B / 2];
    int64_t row_correct[B];
    r = lorad_model_eval_rows(m, b, false, ref_ce, NULL, err); /* the reference: the base model */
    if (r == 0) r = lorad_model_eval_rows(m, b, true, policy_ce, row_correct, err);
    if (r < 0) return r;
    count_preferred(b, row_correct, correct, labels);
    lorad_dpo_forward(sums, margin, policy_ce, ref_ce, beta, B / 2);
    return 0;
}
