/* metrics.jsonl: every documented key is written (a DPO step's rewards too), lines parse back, and truncation for a resume
 * keeps exactly the steps up to the checkpoint, dropping a torn last line. */
#include "testutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_metrics.h"

static struct lorad_step_metrics sample(int64_t step, bool valid) {
    return (struct lorad_step_metrics){.step = step, .total_steps = 10, .epoch = step / 4.0, .train_loss = 2.5 - step * 0.1,
                                       .train_mean_token_accuracy = 0.1 * step, .lr = 3e-4, .grad_norm = 1.5,
                                       .tokens_seen = 512 * step, .tokens_per_s = 1000, .elapsed_s = step,
                                       .eta_s = 10 - step, .has_valid = valid, .valid_loss = 2.0,
                                       .valid_mean_token_accuracy = 0.5};
}

static void test_keys_and_round_trip(void **state) {
    (void)state;
    struct lorad_step_metrics m = sample(3, true);
    json_t *o = lorad_step_metrics_json(&m);
    const char *keys[] = {"step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "lr", "grad_norm",
                          "tokens_seen", "tokens_per_s", "elapsed_s", "eta_s", "valid_loss", "valid_mean_token_accuracy"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_object_get(o, keys[i])) fail_msg("missing key %s", keys[i]);
    assert_int_equal(json_object_size(o), 13);
    struct lorad_step_metrics back;
    assert_int_equal(lorad_step_metrics_from_json(o, &back), 0);
    assert_int_equal(back.step, 3);
    assert_int_equal(back.tokens_seen, 1536);
    assert_true(back.has_valid);
    assert_float_equal(back.train_loss, 2.2, 1e-12);
    json_decref(o);
    m = sample(4, false);
    o = lorad_step_metrics_json(&m);
    assert_null(json_object_get(o, "valid_loss"));
    assert_null(json_object_get(o, "rewards_margin"));
    json_decref(o);

    /* a DPO step's figures, and back */
    m = sample(5, false);
    m.has_dpo = true;
    m.rewards_margin = 0.75;
    m.rewards_accuracy = 0.5;
    m.rewards_chosen = 0.25;
    m.rewards_rejected = -0.5;
    o = lorad_step_metrics_json(&m);
    assert_int_equal(json_object_size(o), 15);
    assert_int_equal(lorad_step_metrics_from_json(o, &back), 0);
    assert_true(back.has_dpo);
    assert_true(back.rewards_margin == 0.75 && back.rewards_accuracy == 0.5 && back.rewards_chosen == 0.25 &&
                back.rewards_rejected == -0.5);
    assert_false(back.has_full_valid);
    json_decref(o);

    /* a scheduled checkpoint's whole-validation-set figures, with or without valid_*, and back */
    for (int with_valid = 0; with_valid < 2; with_valid++) {
        m = sample(6, with_valid);
        m.has_full_valid = true;
        m.full_valid_loss = 1.75;
        m.full_valid_mean_token_accuracy = 0.375;
        o = lorad_step_metrics_json(&m);
        assert_int_equal(json_object_size(o), with_valid ? 15 : 13);
        assert_true(json_real_value(json_object_get(o, "full_valid_loss")) == 1.75);
        assert_true(json_real_value(json_object_get(o, "full_valid_mean_token_accuracy")) == 0.375);
        assert_int_equal(lorad_step_metrics_from_json(o, &back), 0);
        assert_true(back.has_full_valid && back.full_valid_loss == 1.75 && back.full_valid_mean_token_accuracy == 0.375);
        assert_int_equal(back.has_valid, with_valid);
        json_decref(o);
    }
    /* one of the pair alone is not the figures */
    m = sample(7, false);
    o = lorad_step_metrics_json(&m);
    json_object_set_new(o, "full_valid_loss", json_real(1.0));
    assert_int_equal(lorad_step_metrics_from_json(o, &back), 0);
    assert_false(back.has_full_valid);
    json_decref(o);
}

static int64_t count_lines(const char *path, int64_t *ret_last_step) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int64_t n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        *ret_last_step = json_integer_value(json_object_get(o, "step"));
        assert_int_equal(*ret_last_step, n + 1); /* no gaps, no duplicates */
        json_decref(o);
        n++;
    }
    fclose(f);
    return n;
}

static void test_append_and_truncate_for_resume(void **state) {
    (void)state;
    char *dir = test_mkdtemp("metrics");
    char *path = test_path(dir, "metrics.jsonl");
    for (int s = 1; s <= 7; s++) {
        struct lorad_step_metrics m = sample(s, s % 3 == 0);
        assert_int_equal(lorad_metrics_append(path, &m), 0);
    }
    FILE *f = fopen(path, "a"); /* a crash in the middle of appending step 8 */
    fputs("{\"step\":8,\"total_st", f);
    fclose(f);
    assert_int_equal(lorad_metrics_truncate_after(path, 5), 0);
    int64_t last = 0;
    assert_int_equal(count_lines(path, &last), 5);
    assert_int_equal(last, 5);
    /* The resumed run appends 6.. again. */
    for (int s = 6; s <= 10; s++) {
        struct lorad_step_metrics m = sample(s, false);
        assert_int_equal(lorad_metrics_append(path, &m), 0);
    }
    assert_int_equal(count_lines(path, &last), 10);
    char *missing = test_path(dir, "none.jsonl");
    assert_int_equal(lorad_metrics_truncate_after(missing, 3), 0);
    free(missing);
    free(path);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_and_round_trip),
        cmocka_unit_test(test_append_and_truncate_for_resume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
