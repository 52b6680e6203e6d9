/* The figures of one training step, as `metrics.jsonl` records them and the daemon stores them.
 * One line per step:
 *   {"step","total_steps","epoch","train_loss","train_mean_token_accuracy","lr","grad_norm",
 *    "tokens_seen","tokens_per_s","elapsed_s","eta_s"[,"valid_loss","valid_mean_token_accuracy"]
 *    [,"full_valid_loss","full_valid_mean_token_accuracy"]
 *    [,"rewards_margin","rewards_accuracy","rewards_chosen","rewards_rejected"]
 *    [,"world_size"[,"collective_s","collective_bytes"]]} (these in metrics.jsonl, not in the
 *    API's metric objects)
 * For a DPO job train_loss and valid_loss are the mean DPO loss of the step's (or the validation
 * set's) pairs, the token accuracies are over the preferred outputs' tokens, and the rewards_*
 * are means over the step's pairs (engine/train/dpo.h). The full_valid_* figures are those of the
 * whole validation set with the step's weights, at the steps that checkpoint on schedule
 * (checkpoint_every_steps, and the last). */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct lorad_step_metrics {
    int64_t step;        /* 1-based optimiser step just finished */
    int64_t total_steps;
    double epoch;        /* fractional: epochs completed, e.g. 1.25 */
    double train_loss;   /* mean over the step's unmasked tokens */
    double train_mean_token_accuracy;
    double lr;           /* learning rate used for this step */
    double grad_norm;    /* global L2 norm before clipping */
    int64_t tokens_seen; /* input tokens (not padding) so far */
    double tokens_per_s;
    double elapsed_s;
    double eta_s;
    bool has_valid;      /* valid_* are set on evaluation steps */
    double valid_loss;
    double valid_mean_token_accuracy;
    bool has_full_valid;     /* full_valid_* are set on scheduled checkpoint steps and the last */
    double full_valid_loss;  /* mean over every trained token (DPO: pair) of the validation set */
    double full_valid_mean_token_accuracy;
    bool has_dpo;            /* rewards_* are set (method dpo) */
    double rewards_margin;   /* mean of beta ((pi_c - ref_c) - (pi_r - ref_r)) */
    double rewards_accuracy; /* fraction of pairs whose margin is > 0 */
    double rewards_chosen;   /* mean of beta (pi_c - ref_c): log-probabilities of the preferred outputs */
    double rewards_rejected; /* mean of beta (pi_r - ref_r): of the non-preferred outputs */
    int world_size;      /* processes the step was trained on (metrics.jsonl only; 0: not recorded) */
    /* With world_size > 1 (metrics.jsonl only): this process's seconds in the step's sums across
     * processes, waiting for the slower ones included, and the bytes it handed to them. */
    double collective_s;
    int64_t collective_bytes;
};

/* The metrics as a JSON object with the keys above. New reference, caller owns; NULL on ENOMEM. */
json_t *lorad_step_metrics_json(const struct lorad_step_metrics *m);

/* Parses one metrics.jsonl object back. Returns 0 or -EINVAL when a required key is missing. */
int lorad_step_metrics_from_json(const json_t *o, struct lorad_step_metrics *ret);

/* Appends one line to path (created if missing) and fsyncs it, so a line that is there survives a
 * crash. Returns 0 or -errno. */
int lorad_metrics_append(const char *path, const struct lorad_step_metrics *m);

/* Keeps only the lines of path whose step <= last_step (atomically: temp + rename). A resumed run
 * calls this with its checkpoint's step so the history has no gaps and no duplicates. A missing
 * file is fine. Returns 0 or -errno. */
int lorad_metrics_truncate_after(const char *path, int64_t last_step);
