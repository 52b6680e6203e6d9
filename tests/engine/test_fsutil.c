/* Durable writes: a file or directory appears whole or not at all, and a failed write leaves what
 * was there before, with no temporary left behind. */
#include "testutil.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void assert_content(const char *path, const char *want) {
    size_t len;
    char *got = test_read_file(path, &len);
    assert_non_null(got);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(got, want, len);
    free(got);
}

static void test_atomic_file_replaces_or_keeps(void **state) {
    (void)state;
    char *dir = test_mkdtemp("fsutil"), *path = test_path(dir, "f.json"), *tmp = test_path(dir, "f.json.tmp");
    assert_int_equal(lorad_atomic_write_file(path, "first", 5), 0);
    assert_content(path, "first");
    assert_int_equal(lorad_atomic_write_file(path, "second", 6), 0);
    assert_content(path, "second");
    assert_false(exists(tmp));
    /* a writer that fails half way: its bytes never reach path */
    struct lorad_atomic_file f;
    assert_int_equal(lorad_atomic_open(&f, path), 0);
    FILE *fp = lorad_atomic_fdopen(&f);
    assert_non_null(fp);
    fputs("half a", fp);
    assert_int_equal(lorad_atomic_finish(&f, -EIO), -EIO);
    assert_content(path, "second");
    assert_false(exists(tmp));
    /* through the stream, committed */
    assert_int_equal(lorad_atomic_open(&f, path), 0);
    fputs("third", lorad_atomic_fdopen(&f));
    assert_int_equal(lorad_atomic_finish(&f, 0), 0);
    assert_content(path, "third");
    /* a directory that does not exist: the error, nothing created */
    char *missing = test_path(dir, "no/such/file");
    assert_int_equal(lorad_atomic_write_file(missing, "x", 1), -ENOENT);
    free(missing);
    test_rmtree(dir);
    free(dir);
    free(path);
    free(tmp);
}

static void test_dir_swap_in_replaces_whole(void **state) {
    (void)state;
    char *dir = test_mkdtemp("fsutil"), *tmp = test_path(dir, ".a.tmp"), *final = test_path(dir, "a"),
         *old = test_path(dir, ".a.old");
    for (int round = 0; round < 2; round++) {
        assert_int_equal(lorad_mkdir_p(tmp), 0);
        char *file = test_path(tmp, "x.txt");
        const char *text = round ? "new" : "old";
        assert_int_equal(lorad_atomic_write_file(file, text, strlen(text)), 0);
        free(file);
        assert_int_equal(lorad_dir_swap_in(tmp, final, old), 0);
        char *got = test_path(final, "x.txt");
        assert_content(got, text);
        free(got);
        assert_false(exists(tmp));
        assert_false(exists(old));
    }
    /* nothing to swap in: an error, and final keeps what it had */
    assert_int_equal(lorad_dir_swap_in(tmp, final, old), -ENOENT);
    char *got = test_path(final, "x.txt");
    assert_content(got, "new");
    free(got);
    test_rmtree(dir);
    free(dir);
    free(tmp);
    free(final);
    free(old);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atomic_file_replaces_or_keeps),
        cmocka_unit_test(test_dir_swap_in_replaces_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
