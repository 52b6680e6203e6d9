/* The error body has OpenAI's shape; route templates capture ids and refuse near misses. */
#include "testutil.h"

#include <string.h>

#include "api_error.h"
#include "route_match.h"

static void test_error_body_shape(void **state) {
    (void)state;
    json_t *b = lorad_api_error_body(400, "batch_size must be > 0", "hyperparameters.batch_size", "invalid_value");
    assert_non_null(b);
    json_t *e = json_object_get(b, "error");
    assert_true(json_is_object(e));
    assert_int_equal(json_object_size(b), 1);
    assert_int_equal(json_object_size(e), 4);
    assert_string_equal(json_string_value(json_object_get(e, "message")), "batch_size must be > 0");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "hyperparameters.batch_size");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_value");
    json_decref(b);

    b = lorad_api_error_body(401, "missing API key", NULL, NULL);
    e = json_object_get(b, "error");
    assert_true(json_is_null(json_object_get(e, "param")));
    assert_true(json_is_null(json_object_get(e, "code")));
    assert_string_equal(json_string_value(json_object_get(e, "type")), "authentication_error");
    json_decref(b);
    assert_string_equal(lorad_api_error_type(429), "rate_limit_error");
    assert_string_equal(lorad_api_error_type(503), "service_unavailable");
    assert_string_equal(lorad_api_error_type(500), "server_error");
}

static void test_route_match(void **state) {
    (void)state;
    struct lorad_route_params p;
    const char *t = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints/{checkpoint_id}/adapter.tar";
    assert_true(lorad_route_match(t, "/v1/fine_tuning/jobs/ftjob-abc/checkpoints/ftckpt-1/adapter.tar", &p));
    assert_int_equal(p.n, 2);
    assert_string_equal(lorad_route_param(&p, "fine_tuning_job_id"), "ftjob-abc");
    assert_string_equal(lorad_route_param(&p, "checkpoint_id"), "ftckpt-1");
    assert_null(lorad_route_param(&p, "nope"));
    assert_false(lorad_route_match(t, "/v1/fine_tuning/jobs//checkpoints/x/adapter.tar", NULL));
    assert_false(lorad_route_match(t, "/v1/fine_tuning/jobs/a/b/checkpoints/x/adapter.tar", NULL));
    assert_false(lorad_route_match("/v1/files", "/v1/files/", NULL));
    assert_false(lorad_route_match("/v1/files", "/v1/file", NULL));
    assert_true(lorad_route_match("/v1/files", "/v1/files", NULL));
    char longpath[512] = "/v1/files/";
    memset(longpath + 10, 'a', 300);
    longpath[310] = '\0';
    assert_false(lorad_route_match("/v1/files/{file_id}", longpath, NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_body_shape),
        cmocka_unit_test(test_route_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
