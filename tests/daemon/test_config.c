/* The config table: defaults, file parsing with line numbers, flags overriding the file. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static char *write_file(const char *dir, const char *text) {
    char *path = test_path(dir, "lorad.conf");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_defaults(void **state) {
    (void)state;
    struct lorad_config c;
    lorad_config_defaults(&c);
    assert_string_equal(c.bind, "127.0.0.1");
    assert_int_equal(c.workers, 1);
    assert_true(c.max_upload_bytes == (int64_t)1 << 30);
    assert_string_equal(c.log_level, "info");
    assert_string_equal(c.api_key_file, "");
}

static void test_file_parses_and_names_bad_line(void **state) {
    (void)state;
    char *dir = test_mkdtemp("config");
    char *path = write_file(dir, "# comment\n\nport 9000\nworkers = 2   # trailing comment\n"
                                 "max_upload_bytes 64m\nlog_level debug\nstate_dir \"/tmp/x y\"\n");
    struct lorad_config c;
    lorad_config_defaults(&c);
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), 0);
    assert_int_equal(c.port, 9000);
    assert_int_equal(c.workers, 2);
    assert_true(c.max_upload_bytes == 64 * 1024 * 1024);
    assert_string_equal(c.log_level, "debug");
    assert_string_equal(c.state_dir, "/tmp/x y");
    free(path);

    path = write_file(dir, "port 9000\n\nbogus_key 1\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -ENOENT);
    assert_non_null(strstr(err.message, "lorad.conf:3"));
    assert_non_null(strstr(err.message, "bogus_key"));
    free(path);

    path = write_file(dir, "workers 0\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -ERANGE);
    assert_non_null(strstr(err.message, "lorad.conf:1"));
    assert_string_equal(err.param, "workers");
    free(path);

    path = write_file(dir, "log_level loud\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -EINVAL);
    assert_non_null(strstr(err.message, "error|warning|info|debug"));
    free(path);

    path = write_file(dir, "port 80x\n");
    assert_true(lorad_config_load_file(&c, path, false, &err) < 0);
    assert_string_equal(err.param, "port");
    free(path);
    test_rmtree(dir);
    free(dir);
}

static void test_flags_override_file(void **state) {
    (void)state;
    char *dir = test_mkdtemp("config");
    char *path = write_file(dir, "port 9000\nworkers 3\n");
    char *argv[] = {"serve", "--port", "0", "--config", path, "--threads-per-job=2", "--state-dir", "/s", NULL};
    struct lorad_config c;
    lorad_config_defaults(&c);
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_from_args(&c, 8, argv, NULL, &err), 0);
    assert_int_equal(c.port, 0);           /* flag beats file */
    assert_int_equal(c.workers, 3);        /* from file */
    assert_int_equal(c.max_threads_per_job, 2); /* the old name still sets it */
    assert_string_equal(c.state_dir, "/s");

    char *bad[] = {"serve", "--no-such-flag", "1", NULL};
    assert_int_equal(lorad_config_from_args(&c, 3, bad, NULL, &err), -ENOENT);
    assert_non_null(strstr(err.message, "--no-such-flag"));
    char *missing[] = {"serve", "--port", NULL};
    assert_true(lorad_config_from_args(&c, 2, missing, NULL, &err) < 0);
    char *positional[] = {"serve", "extra", NULL};
    assert_true(lorad_config_from_args(&c, 2, positional, NULL, &err) < 0);
    free(path);
    test_rmtree(dir);
    free(dir);
}

/* memory_limit takes a byte size with the same suffixes as the other sizes; 0 (the default) means
 * "80% of MemAvailable at start", resolved by serve; a negative or non-size value names the line. */
static void test_memory_limit_and_threads(void **state) {
    (void)state;
    char *dir = test_mkdtemp("config");
    struct lorad_config c;
    lorad_config_defaults(&c);
    assert_true(c.memory_limit == 0);
    char *path = write_file(dir, "memory_limit 12g\nmax_threads_per_job 4\n");
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), 0);
    assert_true(c.memory_limit == (int64_t)12 << 30);
    assert_int_equal(c.max_threads_per_job, 4);
    free(path);
    const char *bad[] = {"memory_limit -1\n", "memory_limit lots\n", "max_threads_per_job 257\n"};
    const char *param[] = {"memory_limit", "memory_limit", "max_threads_per_job"};
    for (int i = 0; i < 3; i++) {
        path = write_file(dir, bad[i]);
        assert_true(lorad_config_load_file(&c, path, false, &err) < 0);
        assert_string_equal(err.param, param[i]);
        assert_non_null(strstr(err.message, "lorad.conf:1"));
        free(path);
    }
    int64_t b = 0;
    assert_int_equal(lorad_config_parse_bytes("1536m", &b), 0);
    assert_true(b == (int64_t)1536 << 20);
    assert_int_equal(lorad_config_parse_bytes("-5", &b), -ERANGE);
    assert_true(b == (int64_t)1536 << 20); /* untouched on error */
    test_rmtree(dir);
    free(dir);
}

/* [distributed] in the file is the distributed.* keys; its flags are --distributed.KEY. */
static void test_sections(void **state) {
    (void)state;
    char *dir = test_mkdtemp("config");
    char *path = write_file(dir, "workers 2\n[distributed]\nenabled yes\nhosts = a,b\nranks-per-host 2\n");
    struct lorad_config c;
    lorad_config_defaults(&c);
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), 0);
    assert_int_equal(c.workers, 2);
    assert_string_equal(c.distributed.enabled, "yes");
    assert_string_equal(c.distributed.hosts, "a,b");
    assert_int_equal(c.distributed.ranks_per_host, 2);
    assert_int_equal(c.distributed.collective_timeout_s, 600);
    free(path);

    /* a key of the top level is unknown inside the section, and the error names the line */
    path = write_file(dir, "[distributed]\nhosts a\nworkers 2\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -ENOENT);
    assert_non_null(strstr(err.message, "lorad.conf:3"));
    assert_non_null(strstr(err.message, "distributed.workers"));
    free(path);

    path = write_file(dir, "port 1\n[cluster]\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -EINVAL);
    assert_non_null(strstr(err.message, "lorad.conf:2"));
    assert_non_null(strstr(err.message, "[cluster]"));
    free(path);

    path = write_file(dir, "[distributed]\nranks_per_host 0\n");
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), -ERANGE);
    assert_string_equal(err.param, "distributed.ranks_per_host");
    free(path);

    char *argv[] = {"serve", "--distributed.hosts=h1,h2", "--distributed.max-restarts", "5", NULL};
    lorad_config_defaults(&c);
    assert_int_equal(lorad_config_from_args(&c, 4, argv, NULL, &err), 0);
    assert_string_equal(c.distributed.hosts, "h1,h2");
    assert_int_equal(c.distributed.max_restarts, 5);
    test_rmtree(dir);
    free(dir);
}

/* [inference]: on by default with OpenAI-sized limits; bad values name the line and the key. */
static void test_inference_section(void **state) {
    (void)state;
    struct lorad_config c;
    lorad_config_defaults(&c);
    assert_string_equal(c.inference.enabled, "yes");
    assert_int_equal(c.inference.threads, 0);
    assert_int_equal(c.inference.max_concurrent_generations, 8);
    assert_true(c.inference.memory_budget == 0);
    assert_int_equal(c.inference.max_context, 4096);
    char *dir = test_mkdtemp("config");
    char *path = write_file(dir, "[inference]\nenabled no\nthreads 3\nmax-concurrent-generations = 2\n"
                                 "memory_budget 2g\nmax_context 16\n");
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_load_file(&c, path, false, &err), 0);
    assert_string_equal(c.inference.enabled, "no");
    assert_int_equal(c.inference.threads, 3);
    assert_int_equal(c.inference.max_concurrent_generations, 2);
    assert_true(c.inference.memory_budget == (int64_t)2 << 30);
    assert_int_equal(c.inference.max_context, 16);
    free(path);
    static const struct { const char *text, *param; int line; } bad[] = {
        {"[inference]\nenabled maybe\n", "inference.enabled", 2},
        {"[inference]\nthreads 257\n", "inference.threads", 2},
        {"[inference]\n\nmax_concurrent_generations 0\n", "inference.max_concurrent_generations", 3},
        {"[inference]\nmax_concurrent_generations 1025\n", "inference.max_concurrent_generations", 2},
        {"[inference]\nmax_context 15\n", "inference.max_context", 2},
        {"[inference]\nmax_context 1048577\n", "inference.max_context", 2},
        {"[inference]\nmemory_budget -1\n", "inference.memory_budget", 2},
        {"[inference]\nworkers 2\n", NULL, 2}, /* a top-level key inside the section */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        path = write_file(dir, bad[i].text);
        lorad_config_defaults(&c);
        assert_true(lorad_config_load_file(&c, path, false, &err) < 0);
        char at[32];
        snprintf(at, sizeof at, "lorad.conf:%d", bad[i].line);
        assert_non_null(strstr(err.message, at));
        if (bad[i].param) assert_string_equal(err.param, bad[i].param);
        free(path);
    }
    char *argv[] = {"serve", "--inference.enabled=no", "--inference.max-context", "512", NULL};
    lorad_config_defaults(&c);
    assert_int_equal(lorad_config_from_args(&c, 4, argv, NULL, &err), 0);
    assert_string_equal(c.inference.enabled, "no");
    assert_int_equal(c.inference.max_context, 512);
    test_rmtree(dir);
    free(dir);
}

static void test_written_defaults_parse_back(void **state) {
    (void)state;
    /* The commented default config that `cmake --install` ships, uncommented, must load. */
    char *dir = test_mkdtemp("config");
    char *path = test_path(dir, "defaults.conf");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    lorad_config_write_defaults(f);
    fclose(f);
    char *uncommented = test_path(dir, "uncommented.conf");
    FILE *in = fopen(path, "r"), *out = fopen(uncommented, "w");
    char line[4096];
    int keys = 0;
    while (fgets(line, sizeof line, in)) {
        if (line[0] == '[') fputs(line, out); /* a section header */
        if (line[0] == '#' && line[1] != ' ' && line[1] != '\n' && line[1] != '\0') {
            fputs(line + 1, out);
            keys++;
        }
    }
    fclose(in);
    fclose(out);
    int n_options = 0;
    for (const struct lorad_config_option *o = lorad_config_options; o->name; o++) n_options++;
    assert_int_equal(keys, n_options);
    struct lorad_config a, b;
    lorad_config_defaults(&a);
    memset(&b, 0x5a, sizeof b);
    lorad_config_defaults(&b);
    struct lorad_error err = {0};
    assert_int_equal(lorad_config_load_file(&b, uncommented, false, &err), 0);
    assert_memory_equal(&a, &b, sizeof a);
    free(path);
    free(uncommented);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_file_parses_and_names_bad_line),
        cmocka_unit_test(test_flags_override_file),
        cmocka_unit_test(test_memory_limit_and_threads),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_inference_section),
        cmocka_unit_test(test_written_defaults_parse_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
