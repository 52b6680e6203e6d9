/* The DPO loss (Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
 * a Reward Model", 2023, eq. 7) over pairs of batch rows, in terms of the rows' CE sums the model
 * reports (engine/model/model.h: lorad_model_forward_backward_rows, lorad_model_eval_rows).
 *
 * Pair i is rows 2i (the prompt and the preferred output) and 2i+1 (the prompt and the
 * non-preferred output), as lorad_batch_fill lays a preference corpus out. A row's CE sum is
 * minus the log-probability of its output's tokens, so with the adapter (the policy, pi) and
 * without it (the reference, the base model):
 *   reward_x = beta * (log pi(x) - log ref(x)) = beta * (ce_ref(x) - ce_pi(x))
 *   margin   = reward_preferred - reward_non_preferred
 *   loss     = -log sigmoid(margin)
 * The reference is a constant: gradients flow only through the policy's CE sums. */
#pragma once
#include <stdint.h>

#include "error.h"
#include "model.h"

/* What metrics report, summed over pairs. */
struct lorad_dpo_sums {
    double loss;     /* sum of -log sigmoid(margin) */
    double margin;
    double chosen;   /* sum of reward_preferred */
    double rejected; /* sum of reward_non_preferred */
    int64_t correct; /* pairs with margin > 0 */
    int64_t pairs;
};

/* ret_margin (P) = each pair's margin from policy_ce (2P) and ref_ce (2P); their loss, rewards
 * and counts are added into *sums. */
void lorad_dpo_forward(struct lorad_dpo_sums *sums, double *ret_margin, const double *policy_ce, const double *ref_ce,
                       double beta, int n_pairs);

/* ret_dce (2P) = d (scale * sum of the pairs' losses) / d policy_ce: scale * beta * sigmoid(-margin)
 * for a preferred row, minus that for a non-preferred one. */
void lorad_dpo_backward(double *ret_dce, const double *margin, double beta, double scale, int n_pairs);

/* One micro-batch b of pairs through m, as a DPO step trains: the reference's CE sums with the
 * adapter off (no dropout, no gradient), then the policy's forward and backward at the model's
 * dropout counter, each row weighted by lorad_dpo_backward of the margins of that very forward
 * (lorad_model_forward_backward_rows), so the gradient of scale * (sum of the pairs' losses) is
 * added into m's grads. Adds the pairs' figures into *sums and the preferred rows' argmax hits and
 * labels into *correct and *labels (token accuracy over the preferred outputs). 0 or the model's
 * error. */
int lorad_dpo_forward_backward(struct lorad_model *m, const struct lorad_batch *b, double beta, double scale,
                               struct lorad_dpo_sums *sums, int64_t *correct, int64_t *labels, struct lorad_error *err);

/* The same figures without dropout or gradients (validation): the policy's and the reference's
 * CE sums from two forward passes. */
int lorad_dpo_eval(struct lorad_model *m, const struct lorad_batch *b, double beta, struct lorad_dpo_sums *sums,
                   int64_t *correct, int64_t *labels, struct lorad_error *err);
