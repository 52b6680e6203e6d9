/* lorad_store_job_trained_tokens_sum: the figure behind lorad_train_tokens_total. Jobs without a
 * trained_tokens figure count 0; progress updates (direct, and through the metrics writer's
 * tokens_seen) move the sum; the sum is the same after a reopen. */
#include <math.h>
#include <string.h>

#include "store_fixture.h"

static int64_t sum(struct lorad_store *s) {
    int64_t v = -1;
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_job_trained_tokens_sum(s, &v, &err), 0);
    return v;
}

static void test_sum(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    assert_int_equal(sum(fx.store), 0); /* no jobs */

    char file[LORAD_STORE_ID_MAX], a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX], c[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, a);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, b);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, c);
    assert_int_equal(sum(fx.store), 0); /* no figures yet */

    struct lorad_store_progress p = {.step = 1, .total_steps = 4, .epoch = NAN, .tokens_per_s = NAN, .eta_s = NAN,
                                     .trained_tokens = 3000000000LL}; /* beyond 32 bits */
    assert_int_equal(lorad_store_job_set_progress(fx.store, a, &p, NULL), 0);
    p.trained_tokens = 17;
    assert_int_equal(lorad_store_job_set_progress(fx.store, b, &p, NULL), 0);
    assert_int_equal(sum(fx.store), 3000000017LL);
    p.trained_tokens = -1; /* leaves b's figure as it is */
    assert_int_equal(lorad_store_job_set_progress(fx.store, b, &p, NULL), 0);
    assert_int_equal(sum(fx.store), 3000000017LL);

    /* The worker's path: metrics rows carry tokens_seen, which becomes the job's trained_tokens. */
    fx_move(fx.store, c, LORAD_JOB_RUNNING);
    struct lorad_metrics_writer *w;
    assert_int_equal(lorad_metrics_writer_new(fx.store, c, 1, &w, NULL), 0);
    struct lorad_metrics_row row = {.step = 1, .total_steps = 2, .epoch = 0.5, .train_loss = 2, .train_mean_token_accuracy = NAN,
                                    .lr = 1e-3, .grad_norm = 1, .tokens_seen = 500, .tokens_per_s = 10, .elapsed_s = 1,
                                    .eta_s = 1, .valid_loss = NAN, .valid_mean_token_accuracy = NAN};
    assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    assert_int_equal(lorad_metrics_writer_flush(w, NULL), 0);
    lorad_metrics_writer_free(w);
    assert_int_equal(sum(fx.store), 3000000517LL);

    fx_reopen(&fx, LORAD_STORE_READONLY);
    assert_int_equal(sum(fx.store), 3000000517LL);
    fx_close(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
