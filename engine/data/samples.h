/* From a JSONL dataset to training batches.
 *
 * A corpus is an index over a dataset file: for each valid record, its byte offset, line number and
 * token count. Building it validates and tokenises every line once (so "empty after templating" and
 * truncation are known before the first step) but keeps only 16 bytes per record: samples are
 * re-read and re-tokenised when a batch needs them, so the file is never held in memory.
 *
 * Each epoch has a plan: the records in an order shuffled from (seed, epoch), laid into rows of at
 * most max_seq_len tokens. Without packing a row holds one sample; with packing, consecutive
 * samples of the shuffled order share a row, positions restart at each sample and attention never
 * crosses a sample boundary (seg_start marks where each token's sample begins). The plan depends only
 * on (corpus, seed, epoch, packing, max_seq_len), so a resumed run rebuilds the same plan and
 * continues from a row index.
 *
 * A preference corpus (DPO) holds pairs: each record is a prompt with a preferred and a
 * non-preferred output, and becomes two batch rows, the prompt followed by either output with
 * only the output trained. Pairs are never cut at max_seq_len (a pair that does not fit is a bad
 * line, problem longer_than_max_seq_len) and never packed. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "batch.h"
#include "chat_template.h"
#include "dataset.h"
#include "error.h"
#include "data_format.h"

/* How the corpus tokenises text: the tokenizer, seen through the calls the pipeline needs. */
struct lorad_encoder {
    void *ctx;
    /* NULL when the model has no tokenizer: only pre-tokenised records ({"input_ids"}) work.
     * Writes the ids of text (no BOS/EOS added, special-token strings not parsed) to out, at most
     * cap ids, and their count to *ret_n. Returns 0, -ENOSPC when more than cap ids are needed, or
     * -errno. */
    int (*encode)(void *ctx, const char *text, size_t len, int32_t *out, int cap, int *ret_n);
    /* The id of a special token given by its text, or -1 when the tokenizer has none. */
    int (*special_id)(void *ctx, const char *piece);
    int bos_id; /* -1: the model has none and BOS segments are dropped */
    int eos_id;
    int vocab_size; /* > 0: ids of pre-tokenised records must be below it */
};

struct lorad_tokenizer;

/* The encoder view of a tokenizer (borrowed; it must outlive enc): no BOS/EOS added by encode, the
 * tokenizer's own BOS/EOS ids for the template's BOS/EOS segments. */
void lorad_encoder_from_tokenizer(struct lorad_encoder *enc, struct lorad_tokenizer *t, int vocab_size);

/* tmpl, or for AUTO the template the encoder's special tokens call for (lorad_chat_template_auto;
 * NONE without a tokenizer). */
enum lorad_chat_template lorad_encoder_template(const struct lorad_encoder *enc, enum lorad_chat_template tmpl);

/* One tokenised sample: ids and whether each token is a training target. */
struct lorad_sample {
    int n;
    bool truncated;
    int32_t *tokens; /* (n) */
    uint8_t *train;  /* (n) 1 = this token is a label */
};

/* Tokenises rec into ret (whose tokens/train buffers hold cap entries), truncating at max_seq_len
 * tokens. A sample with no trained label left is -EINVAL with *ret_problem = EMPTY. */
int lorad_sample_build(struct lorad_sample *ret, int cap, const struct lorad_record *rec, enum lorad_chat_template tmpl,
                       bool train_on_input, const struct lorad_encoder *enc, int max_seq_len,
                       enum lorad_dataset_problem *ret_problem, struct lorad_error *err);

struct lorad_corpus;

struct lorad_corpus_options {
    enum lorad_data_format format;     /* AUTO detects */
    enum lorad_chat_template tmpl;     /* not AUTO: resolve it first with lorad_chat_template_auto() */
    bool train_on_input;
    int max_seq_len;
    size_t max_line;                   /* 0 = LORAD_DATASET_DEFAULT_MAX_LINE */
    bool skip_invalid;                 /* drop bad lines instead of failing */
};

/* Validates and indexes path. The report (bad lines, counts) is filled even when the corpus is
 * refused. Returns 0 with *ret_corpus; -EINVAL when there are invalid lines (and !skip_invalid) or
 * no usable record; -errno on I/O errors. err names the file. enc is borrowed for the corpus' life. */
int lorad_corpus_open(struct lorad_corpus **ret_corpus, const char *path, const struct lorad_corpus_options *opt,
                      const struct lorad_encoder *enc, struct lorad_dataset_report *ret_report,
                      struct lorad_error *err);
void lorad_corpus_free(struct lorad_corpus *c);

int64_t lorad_corpus_size(const struct lorad_corpus *c);     /* records */
int64_t lorad_corpus_truncated(const struct lorad_corpus *c); /* records cut at max_seq_len */
int64_t lorad_corpus_tokens(const struct lorad_corpus *c);    /* tokens after truncation */
int lorad_corpus_sample_length(const struct lorad_corpus *c, int64_t i);
enum lorad_data_format lorad_corpus_format(const struct lorad_corpus *c);
/* Batch rows each record fills: 2 for a preference corpus (its two samples), else 1. */
int lorad_corpus_rows_per_record(const struct lorad_corpus *c);

/* Re-reads and tokenises record i into ret (buffers of at least max_seq_len entries); for a
 * preference record, its preferred sample. */
int lorad_corpus_sample(struct lorad_corpus *c, int64_t i, struct lorad_sample *ret, struct lorad_error *err);

/* Records that are only evaluated: the last n_holdout records of the file's order are split off
 * for validation loss when no validation file is given. The training corpus then skips them.
 * Returns 0 and *ret_holdout (the caller closes it), or -errno with err: -EINVAL unless
 * 0 < n_holdout < the corpus size, the line reader's error when the file cannot be opened again,
 * -ENOMEM. On error train is unchanged. */
int lorad_corpus_split_holdout(struct lorad_corpus *train, int64_t n_holdout, struct lorad_corpus **ret_holdout,
                               struct lorad_error *err);

/* ---- epoch plans and batches ------------------------------------------------------------- */

struct lorad_epoch_plan {
    int64_t n_rows;
    int64_t *row_first;  /* (n_rows + 1) index into order[] of each row's first sample */
    int64_t *order;      /* (n_samples) record indices in this epoch's order */
};

/* Builds the plan for epoch (0-based). shuffle=false keeps file order (validation). -ENOMEM, or
 * -EINVAL for packing a preference corpus. */
int lorad_epoch_plan_build(struct lorad_epoch_plan *ret, const struct lorad_corpus *c, uint64_t seed, int epoch,
                           bool shuffle, bool packing, int max_seq_len);
void lorad_epoch_plan_clear(struct lorad_epoch_plan *p);

/* Fills b (from lorad_batch_alloc, model/batch.h) with rows [first_row, first_row + n_rows) of plan
 * (n_rows * rows_per_record <= cap_B; fewer at the end), padded to the longest row, and counts
 * n_labels and n_tokens. A preference corpus's plan row r becomes batch rows 2r (the prompt and
 * the preferred output) and 2r + 1 (the prompt and the non-preferred output), so b->B = 2 n_rows. */
int lorad_batch_fill(struct lorad_batch *b, struct lorad_corpus *c, const struct lorad_epoch_plan *plan,
                     int64_t first_row, int n_rows, struct lorad_error *err);
