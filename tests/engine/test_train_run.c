/* lorad_train_run's contract with its caller (the daemon's workers and `lorad train`): the
 * callbacks see every step once and in order, poll() cancels or pauses at a step boundary, a paused
 * run resumes to the same end, and a NaN loss fails with -ERANGE naming the step. Runs on the real
 * stories260K.bin with pre-tokenised data, so it needs no Python and stays fast. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "model_file.h"
#include "train.h"
#include "train_memory.h"

/* The run's calls to lorad_model_eval go through this wrapper (-Wl,--wrap, see CMakeLists.txt):
 * call number eval_fail_at (1-based; 0 = never) fails with -EIO and leaves its outputs unwritten,
 * as the contract allows a failing call to. */
int __real_lorad_model_eval(struct lorad_model *m, const struct lorad_batch *b, double *ret_loss_sum,
                            int64_t *ret_correct, int64_t *ret_tokens, struct lorad_error *err);
int __wrap_lorad_model_eval(struct lorad_model *m, const struct lorad_batch *b, double *ret_loss_sum,
                            int64_t *ret_correct, int64_t *ret_tokens, struct lorad_error *err);
static int eval_calls, eval_fail_at;
int __wrap_lorad_model_eval(struct lorad_model *m, const struct lorad_batch *b, double *ret_loss_sum,
                            int64_t *ret_correct, int64_t *ret_tokens, struct lorad_error *err) {
    if (++eval_calls == eval_fail_at) return lorad_error_set(err, -EIO, "", "injected evaluation failure");
    return __real_lorad_model_eval(m, b, ret_loss_sum, ret_correct, ret_tokens, err);
}

struct calls {
    int64_t steps[1024];
    int n_steps;
    int n_checkpoints;
    int64_t last_checkpoint;
    int max_dirs_at_callback;     /* most step-N directories seen beside `dir` in on_checkpoint */
    int stop_after;               /* poll answers `stop` once this many steps are done */
    enum lorad_train_control stop;
};

static void on_step(void *ctx, const struct lorad_step_metrics *m) {
    struct calls *c = ctx;
    assert_true(c->n_steps < 1024);
    c->steps[c->n_steps++] = m->step;
    assert_true(isfinite(m->train_loss));
    assert_true(m->lr > 0);
}

static int count_step_dirs(const char *root) {
    DIR *d = opendir(root);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strncmp(e->d_name, "step-", 5) == 0;
    closedir(d);
    return n;
}

static void on_checkpoint(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    struct calls *c = ctx;
    c->n_checkpoints++;
    c->last_checkpoint = step;
    assert_int_equal(m->step, step);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    char *root = strdup(dir);
    *strrchr(root, '/') = '\0';
    int n = count_step_dirs(root);
    if (n > c->max_dirs_at_callback) c->max_dirs_at_callback = n;
    free(root);
}

static enum lorad_train_control poll_cb(void *ctx) {
    struct calls *c = ctx;
    return c->stop_after > 0 && c->n_steps >= c->stop_after ? c->stop : LORAD_TRAIN_CONTINUE;
}

static char *write_ids(const char *dir, int n_records, int bad_token) {
    char *path = test_path(dir, "ids.jsonl");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n_records; i++) {
        fprintf(f, "{\"input_ids\":[1");
        for (int t = 0; t < 12; t++) fprintf(f, ",%d", bad_token >= 0 && t == 5 ? bad_token : 3 + (i * 31 + t * 7) % 500);
        fprintf(f, "]}\n");
    }
    fclose(f);
    return path;
}


static void parse_spec(struct lorad_job_spec *spec, const char *json) {
    json_error_t jerr;
    json_t *body = json_loads(json, 0, &jerr);
    assert_non_null(body);
    struct lorad_error err = {0};
    int rc = lorad_job_spec_parse(body, spec, &err);
    if (rc < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    json_decref(body);
}

static const char *SPEC = "{\"model\":\"stories\",\"training_file\":\"ids\",\"seed\":5,"
                          "\"hyperparameters\":{\"n_epochs\":2,\"batch_size\":2,\"max_seq_len\":16,\"threads\":1,"
                          "\"checkpoint_every_steps\":4},\"lora\":{\"r\":4,\"dropout\":0.1}}";

static void run(const struct lorad_job_spec *spec, const char *data, const char *out, bool resume, struct calls *c,
                struct lorad_train_result *res, int want_rc) {
    struct lorad_train_options opt = {.model_path = test_shared_data("stories260K.bin"), .training_path = data,
                                      .out_dir = out, .resume = resume};
    struct lorad_train_callbacks cb = {.ctx = c, .on_step = on_step, .on_checkpoint = on_checkpoint, .poll = poll_cb};
    struct lorad_error err = {0};
    int rc = lorad_train_run(spec, &opt, &cb, res, &err);
    if (rc != want_rc) fprintf(stderr, "rc %d: %s\n", rc, err.message);
    assert_int_equal(rc, want_rc);
}

/* Files a and b hold the same bytes. */
static void assert_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *da = test_read_file(a, &na), *db = test_read_file(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na);
    free(da);
    free(db);
}

static void test_steps_cancel_pause_resume(void **state) {
    (void)state;
    char *dir = test_mkdtemp("train-run");
    char *data = write_ids(dir, 20, -1);
    struct lorad_job_spec spec;
    parse_spec(&spec, SPEC);
    struct lorad_train_result *res = calloc(1, sizeof *res);

    /* Uninterrupted: 20 records, 2 a step, 2 epochs = 20 steps, each reported once in order. */
    struct calls *full = calloc(1, sizeof *full);
    char *out_full = test_path(dir, "full");
    run(&spec, data, out_full, false, full, res, 0);
    assert_int_equal(res->outcome, LORAD_TRAIN_FINISHED);
    assert_int_equal(res->total_steps, 20);
    assert_int_equal(full->n_steps, 20);
    for (int i = 0; i < 20; i++) assert_int_equal(full->steps[i], i + 1);
    assert_int_equal(full->n_checkpoints, 5); /* steps 4, 8, 12, 16, 20 */
    assert_int_equal(full->last_checkpoint, 20);
    /* keep_checkpoints (default 3) is applied only after on_checkpoint returns, so the daemon can
     * forget the pruned checkpoints' records before their directories go: the callback sees the
     * old ones still there, and afterwards three remain. */
    assert_int_equal(full->max_dirs_at_callback, 4);
    char *ckpt_root = test_path(out_full, "checkpoints");
    assert_int_equal(count_step_dirs(ckpt_root), 3);
    free(ckpt_root);

    /* Cancel after 3 steps: stops before step 4, no final adapter. */
    struct calls *cc = calloc(1, sizeof *cc);
    cc->stop_after = 3;
    cc->stop = LORAD_TRAIN_CANCEL;
    char *out_cancel = test_path(dir, "cancel");
    run(&spec, data, out_cancel, false, cc, res, 0);
    assert_int_equal(res->outcome, LORAD_TRAIN_CANCELLED);
    assert_int_equal(res->steps_done, 3);
    assert_int_equal(cc->n_steps, 3);
    char *adapter = test_path(out_cancel, "adapter");
    struct stat st;
    assert_int_equal(stat(adapter, &st), -1);

    /* Pause after 6 steps: checkpoints step 6, then a resume finishes at step 20 from step 7. */
    struct calls *pc = calloc(1, sizeof *pc);
    pc->stop_after = 6;
    pc->stop = LORAD_TRAIN_PAUSE;
    char *out_pause = test_path(dir, "pause");
    run(&spec, data, out_pause, false, pc, res, 0);
    assert_int_equal(res->outcome, LORAD_TRAIN_PAUSED);
    assert_int_equal(pc->last_checkpoint, 6);
    struct calls *rc = calloc(1, sizeof *rc);
    run(&spec, data, out_pause, true, rc, res, 0);
    assert_int_equal(res->outcome, LORAD_TRAIN_FINISHED);
    assert_int_equal(rc->n_steps, 14);
    assert_int_equal(rc->steps[0], 7);
    /* ... and ends where the uninterrupted run ended, byte for byte. */
    char *a = test_path(out_full, "adapter/adapter_model.safetensors"), *b = test_path(out_pause, "adapter/adapter_model.safetensors");
    assert_same_file(a, b);
    free(a);
    free(b);

    free(adapter);
    free(out_full);
    free(out_cancel);
    free(out_pause);
    free(full);
    free(cc);
    free(pc);
    free(rc);
    free(res);
    lorad_job_spec_clear(&spec);
    test_rmtree(dir);
    free(dir);
    free(data);
}

/* A NaN in the embedding of a token the data uses makes the loss NaN at step 1. */
static void test_nan_loss_fails_with_erange(void **state) {
    (void)state;
    char *dir = test_mkdtemp("train-nan");
    char *model = test_path(dir, "nan.bin");
    FILE *in = fopen(test_shared_data("stories260K.bin"), "rb"), *out = fopen(model, "wb");
    assert_non_null(in);
    assert_non_null(out);
    int32_t header[7];
    assert_int_equal(fread(header, sizeof header, 1, in), 1);
    fwrite(header, sizeof header, 1, out);
    int dim = header[0], bad_token = 77;
    float x;
    for (long i = 0; fread(&x, sizeof x, 1, in) == 1; i++) {
        if (i / dim == bad_token) x = NAN; /* the embedding table comes first */
        fwrite(&x, sizeof x, 1, out);
    }
    fclose(in);
    fclose(out);
    char *data = write_ids(dir, 4, bad_token);
    struct lorad_job_spec spec;
    parse_spec(&spec, SPEC);
    struct lorad_train_options opt = {.model_path = model, .training_path = data, .out_dir = dir};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    struct lorad_error err = {0};
    assert_int_equal(lorad_train_run(&spec, &opt, NULL, res, &err), -ERANGE);
    assert_non_null(strstr(err.message, "step 1"));
    lorad_job_spec_clear(&spec);
    free(res);
    free(data);
    free(model);
    test_rmtree(dir);
    free(dir);
}

/* An evaluation whose forward fails part-way fails the run with that error: no validation loss is
 * made of the batches before it (their sum is discarded, never reported), and the step it belonged
 * to reports no metrics. Every evaluation before it reported a finite loss. */
static void test_evaluation_failure_fails_the_run(void **state) {
    (void)state;
    char *dir = test_mkdtemp("train-eval");
    char *data = write_ids(dir, 40, -1); /* hold-out: 4 samples = 2 eval batches of 2 */
    struct lorad_job_spec spec;
    parse_spec(&spec, "{\"model\":\"stories\",\"training_file\":\"ids\",\"seed\":5,"
                      "\"hyperparameters\":{\"n_epochs\":1,\"batch_size\":2,\"max_seq_len\":16,\"threads\":1,"
                      "\"eval_every_steps\":2},\"lora\":{\"r\":4}}");
    struct calls c = {0};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    eval_calls = 0;
    eval_fail_at = 4; /* the second batch of the second evaluation (step 4) */
    struct lorad_train_options opt = {.model_path = test_shared_data("stories260K.bin"), .training_path = data,
                                      .out_dir = dir};
    struct lorad_train_callbacks cb = {.ctx = &c, .on_step = on_step, .poll = poll_cb};
    struct lorad_error err = {0};
    assert_int_equal(lorad_train_run(&spec, &opt, &cb, res, &err), -EIO);
    eval_fail_at = 0;
    assert_non_null(strstr(err.message, "injected evaluation failure"));
    assert_int_equal(eval_calls, 4);
    assert_int_equal(c.n_steps, 3); /* steps 1-3 reported; step 4 failed in its evaluation */
    assert_int_equal(c.steps[c.n_steps - 1], 3);
    lorad_job_spec_clear(&spec);
    free(res);
    free(data);
    test_rmtree(dir);
    free(dir);
}

/* A DPO job on data that is not preference pairs stops before any step, naming the file; and a
 * DPO pair is two rows, so its memory estimate is that of a supervised job with twice the batch. */
static void test_dpo_refuses_other_data_and_counts_two_rows(void **state) {
    (void)state;
    char *dir = test_mkdtemp("train-dpo");
    char *data = write_ids(dir, 4, -1);
    struct lorad_job_spec spec;
    parse_spec(&spec, "{\"model\":\"stories\",\"training_file\":\"ids\",\"method\":{\"type\":\"dpo\",\"dpo\":"
                      "{\"hyperparameters\":{\"batch_size\":3,\"max_seq_len\":16,\"threads\":1}}}}");
    struct lorad_train_options opt = {.model_path = test_shared_data("stories260K.bin"), .training_path = data,
                                      .out_dir = dir};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    struct lorad_error err = {0};
    assert_int_equal(lorad_train_run(&spec, &opt, NULL, res, &err), -EINVAL);
    assert_string_equal(err.param, "training_file");
    assert_non_null(strstr(err.message, "preference pairs"));
    assert_int_equal(res->steps_done, 0);

    struct lorad_job_spec sft;
    parse_spec(&sft, "{\"model\":\"stories\",\"training_file\":\"ids\",\"hyperparameters\":{\"batch_size\":6,"
                     "\"max_seq_len\":16,\"threads\":1}}");
    struct lorad_model_file *mf = NULL;
    assert_int_equal(lorad_model_file_open(opt.model_path, &mf, &err), 0);
    struct lorad_memory_estimate e_dpo, e_sft;
    assert_int_equal(lorad_train_memory_estimate(&e_dpo, &spec, mf, 1, 4, &err), 0);
    assert_int_equal(lorad_train_memory_estimate(&e_sft, &sft, mf, 1, 4, &err), 0);
    assert_true(e_dpo.activations == e_sft.activations && e_dpo.batches == e_sft.batches);
    lorad_model_file_close(mf);
    lorad_job_spec_clear(&sft);
    lorad_job_spec_clear(&spec);
    free(res);
    free(data);
    test_rmtree(dir);
    free(dir);
}

/* What a run with a validation set reports, step by step; it pauses once pause_after steps are
 * reported (0: never). */
struct eval_log {
    struct lorad_step_metrics m[64];
    int n;
    char messages[16][256];
    int n_messages;
    int pause_after;
};

/* on_step: keeps a copy of every step's metrics. */
static void log_step(void *ctx, const struct lorad_step_metrics *m) {
    struct eval_log *l = ctx;
    assert_true(l->n < 64);
    l->m[l->n++] = *m;
}

/* on_message: keeps the full validation events. */
static void log_message(void *ctx, const char *level, const char *message) {
    (void)level;
    struct eval_log *l = ctx;
    if (strncmp(message, "full validation", 15) != 0) return;
    assert_true(l->n_messages < 16);
    snprintf(l->messages[l->n_messages++], sizeof l->messages[0], "%s", message);
}

/* poll: pauses once pause_after steps are reported. */
static enum lorad_train_control log_poll(void *ctx) {
    struct eval_log *l = ctx;
    return l->pause_after > 0 && l->n >= l->pause_after ? LORAD_TRAIN_PAUSE : LORAD_TRAIN_CONTINUE;
}

/* Runs spec on stories260K (valid may be NULL) into out, logging into l; the run must return 0 with
 * outcome want. */
static void run_logged(const struct lorad_job_spec *spec, const char *data, const char *valid, const char *out,
                       bool resume, struct eval_log *l, enum lorad_train_outcome want) {
    struct lorad_train_options opt = {.model_path = test_shared_data("stories260K.bin"), .training_path = data,
                                      .validation_path = valid, .out_dir = out, .resume = resume};
    struct lorad_train_callbacks cb = {.ctx = l, .on_step = log_step, .on_message = log_message, .poll = log_poll};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    struct lorad_error err = {0};
    int rc = lorad_train_run(spec, &opt, &cb, res, &err);
    if (rc < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(res->outcome, want);
    free(res);
}

/* full_valid_* come at the steps that checkpoint on schedule and at the last, from one pass over
 * every batch of the validation set (shared with valid_* when both are due), with an event naming
 * the count of tokens the mean is over; and evaluating changes nothing the run trains: the adapter
 * is the one of the same run without a validation set, bit for bit, even with dropout. */
static void test_full_validation_at_checkpoints(void **state) {
    (void)state;
    char *dir = test_mkdtemp("train-fullvalid");
    char *vdir = test_path(dir, "v");
    assert_int_equal(mkdir(vdir, 0755), 0);
    char *data = write_ids(dir, 10, -1);
    char *valid = write_ids(vdir, 5, -1); /* 5 records of 13 ids: batches of 2, 2 and 1 */
    struct lorad_job_spec spec, plain;
    const char *hp = "\"n_epochs\":2,\"batch_size\":2,\"max_seq_len\":16,\"threads\":1,\"checkpoint_every_steps\":3,"
                     "\"keep_checkpoints\":10";
    char json[512];
    snprintf(json, sizeof json, "{\"model\":\"stories\",\"training_file\":\"ids\",\"validation_file\":\"v\","
             "\"seed\":5,\"hyperparameters\":{%s,\"eval_every_steps\":4},\"lora\":{\"r\":4,\"dropout\":0.2}}", hp);
    parse_spec(&spec, json);
    snprintf(json, sizeof json, "{\"model\":\"stories\",\"training_file\":\"ids\",\"seed\":5,"
             "\"hyperparameters\":{%s},\"lora\":{\"r\":4,\"dropout\":0.2}}", hp);
    parse_spec(&plain, json);

    struct eval_log *l = calloc(1, sizeof *l);
    char *out = test_path(dir, "valid");
    eval_calls = 0;
    run_logged(&spec, data, valid, out, false, l, LORAD_TRAIN_FINISHED);
    assert_int_equal(l->n, 10);
    int passes = 0;
    for (int i = 0; i < l->n; i++) {
        const struct lorad_step_metrics *m = &l->m[i];
        int64_t s = m->step;
        assert_int_equal(m->has_full_valid, s % 3 == 0 || s == 10);
        assert_int_equal(m->has_valid, s % 4 == 0 || s == 10);
        passes += m->has_full_valid || m->has_valid;
        if (m->has_full_valid) {
            assert_true(isfinite(m->full_valid_loss) && m->full_valid_loss > 0);
            assert_true(m->full_valid_mean_token_accuracy >= 0 && m->full_valid_mean_token_accuracy <= 1);
        }
        if (m->has_full_valid && m->has_valid) { /* the same pass */
            assert_true(m->full_valid_loss == m->valid_loss);
            assert_true(m->full_valid_mean_token_accuracy == m->valid_mean_token_accuracy);
        }
    }
    /* steps 3, 4, 6, 8, 9 and 10: six passes of three batches, none twice and none cut short */
    assert_int_equal(passes, 6);
    assert_int_equal(eval_calls, 6 * 3);
    /* each record's 13 ids predict 12 labels: 60 tokens, named in one event per checkpoint step */
    assert_int_equal(l->n_messages, 4);
    const int64_t want_steps[4] = {3, 6, 9, 10};
    for (int k = 0; k < 4; k++) {
        char tail[64];
        snprintf(tail, sizeof tail, " over 60 tokens at step %lld", (long long)want_steps[k]);
        const char *msg = l->messages[k];
        assert_true(strlen(msg) > strlen(tail));
        assert_string_equal(msg + strlen(msg) - strlen(tail), tail);
        char loss[32];
        snprintf(loss, sizeof loss, "full validation loss %.4f ", l->m[want_steps[k] - 1].full_valid_loss);
        assert_true(strncmp(msg, loss, strlen(loss)) == 0);
    }

    /* the same run without a validation set trains the same adapter */
    struct eval_log *lp = calloc(1, sizeof *lp);
    char *out_plain = test_path(dir, "plain");
    run_logged(&plain, data, NULL, out_plain, false, lp, LORAD_TRAIN_FINISHED);
    assert_int_equal(lp->n, 10);
    for (int i = 0; i < lp->n; i++) {
        assert_false(lp->m[i].has_full_valid || lp->m[i].has_valid);
        assert_true(lp->m[i].train_loss == l->m[i].train_loss);
    }
    assert_int_equal(lp->n_messages, 0);
    char *a = test_path(out, "adapter/adapter_model.safetensors"), *b = test_path(out_plain, "adapter/adapter_model.safetensors");
    assert_same_file(a, b);

    /* paused after step 5 (its checkpoint makes no pass) and resumed: steps 6 to 10 report what the
     * uninterrupted run did, bit for bit, and end on its adapter */
    struct eval_log *lr = calloc(1, sizeof *lr);
    lr->pause_after = 5;
    char *out_paused = test_path(dir, "paused");
    run_logged(&spec, data, valid, out_paused, false, lr, LORAD_TRAIN_PAUSED);
    assert_int_equal(lr->n, 5);
    assert_int_equal(lr->n_messages, 1); /* step 3 */
    memset(lr, 0, sizeof *lr);
    run_logged(&spec, data, valid, out_paused, true, lr, LORAD_TRAIN_FINISHED);
    assert_int_equal(lr->n, 5);
    for (int i = 0; i < lr->n; i++) {
        const struct lorad_step_metrics *g = &lr->m[i], *w = &l->m[i + 5];
        assert_int_equal(g->step, w->step);
        assert_int_equal(g->has_full_valid, w->has_full_valid);
        assert_true(g->full_valid_loss == w->full_valid_loss);
        assert_true(g->full_valid_mean_token_accuracy == w->full_valid_mean_token_accuracy);
        assert_true(g->valid_loss == w->valid_loss && g->train_loss == w->train_loss);
    }
    assert_int_equal(lr->n_messages, 3); /* steps 6, 9 and 10 */
    free(b);
    b = test_path(out_paused, "adapter/adapter_model.safetensors");
    assert_same_file(a, b);

    free(a);
    free(b);
    free(out_paused);
    free(lr);
    free(out);
    free(out_plain);
    free(l);
    free(lp);
    lorad_job_spec_clear(&spec);
    lorad_job_spec_clear(&plain);
    free(data);
    free(valid);
    free(vdir);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps_cancel_pause_resume),
        cmocka_unit_test(test_nan_loss_fails_with_erange),
        cmocka_unit_test(test_evaluation_failure_fails_the_run),
        cmocka_unit_test(test_dpo_refuses_other_data_and_counts_two_rows),
        cmocka_unit_test(test_full_validation_at_checkpoints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
