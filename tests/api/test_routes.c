/* Dispatch: 404 for unknown paths, 405 with the allowed methods, ids validated by prefix. */
#include "testutil.h"

#include <errno.h>
#include <string.h>

#include "routes.h"

static void test_lookup(void **state) {
    (void)state;
    struct lorad_route_params p;
    unsigned st = 0;
    char allow[64];
    const struct lorad_api_route *r =
        lorad_api_route_lookup("GET", "/v1/fine_tuning/jobs/ftjob-abc/events", &p, &st, allow, sizeof allow);
    assert_non_null(r);
    assert_string_equal(r->path, "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events");
    assert_string_equal(lorad_route_param(&p, "fine_tuning_job_id"), "ftjob-abc");

    assert_null(lorad_api_route_lookup("PUT", "/v1/files/file-1", &p, &st, allow, sizeof allow));
    assert_int_equal(st, 405);
    assert_true(strstr(allow, "GET") && strstr(allow, "DELETE"));
    assert_null(strstr(allow, "POST"));

    assert_null(lorad_api_route_lookup("GET", "/v1/nothing", &p, &st, allow, sizeof allow));
    assert_int_equal(st, 404);
}

/* A fine-tuned model name ("ft:<base>:<suffix>:<job-id>") is one segment: ':' is captured like any
 * other byte, and '/' still ends the segment. */
static void test_colon_in_segment(void **state) {
    (void)state;
    struct lorad_route_params p;
    unsigned st = 0;
    char allow[64];
    const struct lorad_api_route *r = lorad_api_route_lookup(
        "GET", "/v1/models/ft:demo-hf:lorad:ftjob-abc/adapter.tar", &p, &st, allow, sizeof allow);
    assert_non_null(r);
    assert_string_equal(r->path, "/v1/models/{model}/adapter.tar");
    assert_string_equal(lorad_route_param(&p, "model"), "ft:demo-hf:lorad:ftjob-abc");
    r = lorad_api_route_lookup("GET", "/v1/models/ft:a:b:c", &p, &st, allow, sizeof allow);
    assert_non_null(r);
    assert_string_equal(r->path, "/v1/models/{model}");
    assert_string_equal(lorad_route_param(&p, "model"), "ft:a:b:c");
    assert_null(lorad_api_route_lookup("GET", "/v1/models/ft:a/b:c", &p, &st, allow, sizeof allow));
}

static void test_not_wired_and_livez(void **state) {
    (void)state;
    struct lorad_route_params p;
    unsigned st;
    char allow[64];
    const struct lorad_api_route *r = lorad_api_route_lookup("GET", "/v1/models", &p, &st, allow, sizeof allow);
    struct lorad_api_reply reply = {0};
    struct lorad_api_request req = {0};
    assert_int_equal(r->handler(&req, &reply), 0);
    assert_int_equal(reply.status, 503);
    assert_string_equal(json_string_value(json_object_get(json_object_get(reply.json, "error"), "code")), "not_wired");
    json_decref(reply.json);

    r = lorad_api_route_lookup("GET", "/livez", &p, &st, allow, sizeof allow);
    assert_true(r->public_route);
    memset(&reply, 0, sizeof reply);
    assert_int_equal(r->handler(&req, &reply), 0);
    assert_int_equal(reply.status, 200);
    json_decref(reply.json);
    assert_int_equal(lorad_api_set_handler("GET", "/nope", lorad_api_handler_not_wired), -ENOENT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_colon_in_segment),
        cmocka_unit_test(test_not_wired_and_livez),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
