/* The API key file (api/api_keys.c): whole lines, never cut into keys; a key over 255 bytes, a
 * 65th key, a space or control character inside a key or an over-long line refuses the whole
 * file naming the line; CRLF, blanks and comments; an empty file accepts nothing; a refused file
 * keeps the old keys; the verdicts 0/401/403. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_keys.h"

static char *dir;

/* Writes len bytes as dir/name and returns the path (owned by the caller). */
static char *write_keys(const char *name, const char *data, size_t len) {
    char *path = test_path(dir, name);
    test_write_file(path, data, len);
    return path;
}

static char *write_keys_str(const char *name, const char *text) {
    return write_keys(name, text, strlen(text));
}

/* The verdict for "Bearer TOKEN". */
static unsigned bearer(struct lorad_api_keys *k, const char *token) {
    size_t n = strlen(token) + 8;
    char *h = malloc(n);
    assert_non_null(h);
    snprintf(h, n, "Bearer %s", token);
    unsigned v = lorad_api_keys_verdict(k, h);
    free(h);
    return v;
}

static char *repeat(char c, size_t n) {
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Opening path must fail with code, an error naming the file and containing want, and leave
 * *ret_keys alone. */
static void assert_refused(const char *path, int code, const char *want) {
    struct lorad_api_keys *k = (struct lorad_api_keys *)&k; /* a sentinel that must survive */
    struct lorad_error err = {0};
    assert_int_equal(lorad_api_keys_open(path, &k, &err), code);
    assert_ptr_equal(k, (struct lorad_api_keys *)&k);
    if (!strstr(err.message, want) || !strstr(err.message, path)) fail_msg("got \"%s\", want \"%s\"", err.message, want);
    assert_string_equal(err.param, "api_key_file");
}

static void test_max_length_key(void **state) {
    (void)state;
    char *k255 = repeat('a', 255), *k256 = repeat('a', 256);
    k255[0] = 'X';  /* a prefix or suffix of it differs from a run of a's at the ends */
    k255[254] = 'Z';
    char text[1024];
    snprintf(text, sizeof text, "# one key of the limit's length\n%s\n", k255);
    char *path = write_keys_str("k255", text);
    struct lorad_api_keys *k = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_api_keys_open(path, &k, &err), 0);
    assert_int_equal(lorad_api_keys_count(k), 1);
    assert_int_equal(bearer(k, k255), 0);
    /* Not its prefixes, suffixes or pieces: the old loader turned the tail of a long line into a
     * key of its own. */
    for (size_t cut = 1; cut < 255; cut += 17) {
        char piece[256];
        snprintf(piece, sizeof piece, "%.*s", (int)(255 - cut), k255);
        assert_int_equal(bearer(k, piece), 403);
        assert_int_equal(bearer(k, k255 + cut), 403);
    }
    char longer[300];
    snprintf(longer, sizeof longer, "%sZ", k255);
    assert_int_equal(bearer(k, longer), 403);
    lorad_api_keys_free(k);
    free(path);

    /* One byte more is refused, naming the line; its first 255 bytes are no key either. */
    snprintf(text, sizeof text, "good\n\n%s\n", k256);
    path = write_keys_str("k256", text);
    assert_refused(path, -E2BIG, "line 3: key is 256 bytes, longer than the 255-byte limit");
    free(path);
    free(k255);
    free(k256);
}

static void test_key_count_limit(void **state) {
    (void)state;
    size_t cap = 65 * 16 + 64;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t n = 0;
    for (int i = 1; i <= 64; i++) n += (size_t)snprintf(text + n, cap - n, "key-%02d\n", i);
    char *path = write_keys("k64", text, n);
    struct lorad_api_keys *k = NULL;
    assert_int_equal(lorad_api_keys_open(path, &k, NULL), 0);
    assert_int_equal(lorad_api_keys_count(k), 64);
    assert_int_equal(bearer(k, "key-01"), 0);
    assert_int_equal(bearer(k, "key-64"), 0);
    lorad_api_keys_free(k);
    free(path);

    n += (size_t)snprintf(text + n, cap - n, "key-65\n");
    path = write_keys("k65", text, n);
    assert_refused(path, -E2BIG, "line 65: more than 64 keys");
    free(path);

    /* The line named is the file's line, not the key's number. */
    memmove(text + 4, text, n);
    memcpy(text, "#c\n\n", 4);
    path = write_keys("k65c", text, n + 4);
    assert_refused(path, -E2BIG, "line 67: more than 64 keys");
    free(path);
    free(text);
}

static void test_crlf_blank_and_comments(void **state) {
    (void)state;
    char *path = write_keys_str("crlf", "# keys for the farm\r\n\r\nk1\r\n  k2 \t\r\n\t# indented comment\r\n"
                                        "a#b\r\n   \r\nk3");
    struct lorad_api_keys *k = NULL;
    assert_int_equal(lorad_api_keys_open(path, &k, NULL), 0);
    assert_int_equal(lorad_api_keys_count(k), 4);
    assert_int_equal(bearer(k, "k1"), 0);
    assert_int_equal(bearer(k, "k2"), 0);
    assert_int_equal(bearer(k, "a#b"), 0);  /* a '#' inside a key is part of it */
    assert_int_equal(bearer(k, "k3"), 0);   /* the last line needs no newline */
    assert_int_equal(bearer(k, "k1\r"), 403);
    assert_int_equal(bearer(k, " k2"), 403);
    assert_int_equal(bearer(k, "a"), 403);
    lorad_api_keys_free(k);
    free(path);

    /* A CR that is not the one before the LF is inside the key. */
    path = write_keys_str("cr", "k1\nab\rcd\n");
    assert_refused(path, -EINVAL, "line 2: byte 3 of the key is control character 0x0d");
    free(path);
}

static void test_long_line_not_split(void **state) {
    (void)state;
    char *line = repeat('q', 100 * 1024);
    size_t cap = strlen(line) + 64;
    char *text = malloc(cap);
    assert_non_null(text);
    int n = snprintf(text, cap, "k1\n%s\nk2\n", line);
    char *path = write_keys("long", text, (size_t)n);
    assert_refused(path, -E2BIG, "line 2: line longer than 4096 bytes");
    free(path);

    /* Under the line limit but over the key limit: the key's own length is named. */
    n = snprintf(text, cap, "k1\n   %.4000s   \n", line);
    path = write_keys("long2", text, (size_t)n);
    assert_refused(path, -E2BIG, "line 2: key is 4000 bytes");
    free(path);
    free(text);
    free(line);
}

static void test_bad_bytes_inside_a_key(void **state) {
    (void)state;
    char *path = write_keys_str("space", "good\nkey five\n");
    assert_refused(path, -EINVAL, "line 2: byte 4 of the key is a space");
    free(path);
    path = write_keys_str("tab", "key\tsix\n");
    assert_refused(path, -EINVAL, "line 1: byte 4 of the key is a tab");
    free(path);
    path = write_keys("nul", "ab\0cd\n", 6);
    assert_refused(path, -EINVAL, "line 1: byte 3 of the key is control character 0x00");
    free(path);
    path = write_keys_str("del", "ok\n\nx\x7fy\n");
    assert_refused(path, -EINVAL, "line 3: byte 2 of the key is control character 0x7f");
    free(path);
    /* Bytes above 0x7f are allowed (a UTF-8 key is still a key). */
    path = write_keys_str("utf8", "cl\xc3\xa9\n");
    struct lorad_api_keys *k = NULL;
    assert_int_equal(lorad_api_keys_open(path, &k, NULL), 0);
    assert_int_equal(bearer(k, "cl\xc3\xa9"), 0);
    lorad_api_keys_free(k);
    free(path);
}

/* An empty file (or only comments) is authentication with no key: nothing gets in. */
static void test_empty_file(void **state) {
    (void)state;
    const char *texts[] = {"", "\n\n", "# all keys revoked\n"};
    for (size_t i = 0; i < 3; i++) {
        char *path = write_keys_str("empty", texts[i]);
        struct lorad_api_keys *k = NULL;
        assert_int_equal(lorad_api_keys_open(path, &k, NULL), 0);
        assert_int_equal(lorad_api_keys_count(k), 0);
        assert_int_equal(lorad_api_keys_verdict(k, NULL), 401);
        assert_int_equal(bearer(k, ""), 403);
        assert_int_equal(bearer(k, "anything"), 403);
        lorad_api_keys_free(k);
        free(path);
    }
}

static void test_verdicts(void **state) {
    (void)state;
    assert_int_equal(lorad_api_keys_verdict(NULL, NULL), 0);
    struct lorad_api_keys *k = NULL;
    assert_int_equal(lorad_api_keys_open(NULL, &k, NULL), 0); /* authentication off */
    assert_int_equal(lorad_api_keys_verdict(k, NULL), 0);
    assert_int_equal(bearer(k, "whatever"), 0);
    assert_int_equal(lorad_api_keys_count(k), 0);
    assert_int_equal(lorad_api_keys_reload(k, NULL), 0);
    lorad_api_keys_free(k);

    char *path = write_keys_str("v", "k1\nsecond-key\n");
    assert_int_equal(lorad_api_keys_open(path, &k, NULL), 0);
    assert_int_equal(lorad_api_keys_verdict(k, NULL), 401);
    assert_int_equal(lorad_api_keys_verdict(k, "k1"), 401);
    assert_int_equal(lorad_api_keys_verdict(k, "Basic k1"), 401);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer"), 401);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer k1"), 0);
    assert_int_equal(lorad_api_keys_verdict(k, "bearer k1"), 0); /* the scheme is case-insensitive */
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer second-key"), 0);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer K1"), 403);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer k1 "), 403);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer  k1"), 403);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer k"), 403);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer k12"), 403);
    assert_int_equal(lorad_api_keys_verdict(k, "Bearer "), 403);
    char *huge = repeat('k', 100000);
    assert_int_equal(bearer(k, huge), 403);
    free(huge);
    lorad_api_keys_free(k);
    free(path);
    lorad_api_keys_free(NULL);
}

/* A file that cannot be used changes nothing: not the keys, not the file a reload re-reads. */
static void test_refused_file_keeps_old_keys(void **state) {
    (void)state;
    char *good = write_keys_str("good", "old-key\n");
    char *bad = write_keys_str("bad", "new-key\nnew key\n");
    char *missing = test_path(dir, "missing");
    struct lorad_api_keys *k = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_api_keys_open(good, &k, &err), 0);

    assert_int_equal(lorad_api_keys_use_file(k, bad, &err), -EINVAL);
    assert_non_null(strstr(err.message, "line 2"));
    assert_int_equal(bearer(k, "old-key"), 0);
    assert_int_equal(bearer(k, "new-key"), 403); /* no part of a refused file is used */
    assert_int_equal(lorad_api_keys_use_file(k, missing, &err), -ENOENT);
    assert_non_null(strstr(err.message, "cannot read api_key_file"));
    assert_non_null(strstr(err.message, missing));
    assert_int_equal(bearer(k, "old-key"), 0);
    assert_int_equal(lorad_api_keys_use_file(k, dir, &err) < 0, 1); /* a directory is no key file */
    assert_int_equal(bearer(k, "old-key"), 0);

    /* The file in use is still the good one: a reload re-reads it. */
    test_write_file(good, "newer-key\n", 10);
    assert_int_equal(lorad_api_keys_reload(k, &err), 0);
    assert_int_equal(bearer(k, "newer-key"), 0);
    assert_int_equal(bearer(k, "old-key"), 403);

    /* The same file gone bad keeps its last keys. */
    test_write_file(good, "newer-key\nx y\n", 14);
    assert_int_equal(lorad_api_keys_reload(k, &err), -EINVAL);
    assert_int_equal(bearer(k, "newer-key"), 0);

    /* "" turns authentication off; a bad file then leaves it off. */
    assert_int_equal(lorad_api_keys_use_file(k, "", &err), 0);
    assert_int_equal(lorad_api_keys_verdict(k, NULL), 0);
    assert_int_equal(lorad_api_keys_use_file(k, bad, &err), -EINVAL);
    assert_int_equal(lorad_api_keys_verdict(k, NULL), 0);

    char *long_path = repeat('p', 5000);
    assert_int_equal(lorad_api_keys_use_file(k, long_path, &err), -ENAMETOOLONG);
    assert_int_equal(lorad_api_keys_verdict(k, NULL), 0);
    free(long_path);
    lorad_api_keys_free(k);

    assert_refused(missing, -ENOENT, "cannot read api_key_file");
    free(good);
    free(bad);
    free(missing);
}

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("api-keys");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_length_key),
        cmocka_unit_test(test_key_count_limit),
        cmocka_unit_test(test_crlf_blank_and_comments),
        cmocka_unit_test(test_long_line_not_split),
        cmocka_unit_test(test_bad_bytes_inside_a_key),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_refused_file_keeps_old_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
