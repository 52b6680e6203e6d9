/* Checkpoint directories: atomic commit, rotation to the newest K, replacement of a repeated step,
 * and crash safety: a child killed with SIGKILL at random moments never leaves an incomplete
 * step-N directory. */
#include "testutil.h"

#include <dirent.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_dir.h"

static void write_file(const char *dir, const char *name, const char *text, size_t repeat) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < repeat; i++) fputs(text, f);
    fclose(f);
}

static bool exists(const char *root, const char *name) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", root, name);
    return stat(path, &st) == 0;
}

static void make_checkpoint(const char *root, int64_t step, int keep) {
    char tmp[4096];
    struct lorad_error err = {0};
    assert_int_equal(lorad_checkpoint_begin(root, step, tmp, sizeof tmp, &err), 0);
    char text[64];
    snprintf(text, sizeof text, "step %lld\n", (long long)step);
    write_file(tmp, "state", text, 1);
    write_file(tmp, "adapter", "x", 1000);
    assert_int_equal(lorad_checkpoint_commit(root, step, NULL, 0, &err), 0);
    lorad_checkpoint_prune(root, keep);
}

static void test_commit_rotate_latest(void **state) {
    (void)state;
    char *dir = test_mkdtemp("ckpt");
    char *root = test_path(dir, "checkpoints");
    int64_t step;
    char path[4096];
    assert_int_equal(lorad_checkpoint_latest(root, &step, path, sizeof path), 0);
    for (int s = 10; s <= 50; s += 10) make_checkpoint(root, s, 3);
    assert_int_equal(lorad_checkpoint_latest(root, &step, path, sizeof path), 1);
    assert_int_equal(step, 50);
    assert_false(exists(root, "step-10"));
    assert_false(exists(root, "step-20"));
    assert_true(exists(root, "step-30") && exists(root, "step-40") && exists(root, "step-50"));
    /* Numeric, not lexical, order: step-100 is newer than step-50. */
    make_checkpoint(root, 100, 3);
    assert_int_equal(lorad_checkpoint_latest(root, &step, path, sizeof path), 1);
    assert_int_equal(step, 100);
    assert_false(exists(root, "step-30"));
    /* A repeated step replaces the old copy. */
    make_checkpoint(root, 100, 3);
    assert_true(exists(root, "step-100/state"));
    /* Leftover temp dirs are cleaned and never count as checkpoints. */
    char tmp[4096];
    assert_int_equal(lorad_checkpoint_begin(root, 200, tmp, sizeof tmp, NULL), 0);
    assert_int_equal(lorad_checkpoint_latest(root, &step, path, sizeof path), 1);
    assert_int_equal(step, 100);
    assert_int_equal(lorad_checkpoint_clean_temp(root), 0);
    assert_false(exists(root, ".step-200.tmp"));
    free(root);
    test_rmtree(dir);
    free(dir);
}

static void test_sigkill_never_leaves_partial_checkpoint(void **state) {
    (void)state;
    char *dir = test_mkdtemp("ckpt-crash");
    char *root = test_path(dir, "checkpoints");
    srand((unsigned)time(NULL));
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (int64_t s = round * 1000 + 1;; s++) {
                char tmp[4096];
                if (lorad_checkpoint_begin(root, s, tmp, sizeof tmp, NULL) < 0) _exit(3);
                char text[64];
                snprintf(text, sizeof text, "step %lld\n", (long long)s);
                write_file(tmp, "adapter", "0123456789abcdef", 4096);
                write_file(tmp, "state", text, 1); /* written last: its presence proves the rest */
                if (lorad_checkpoint_commit(root, s, NULL, 0, NULL) < 0) _exit(4);
                lorad_checkpoint_prune(root, 2);
            }
        }
        usleep(1000 + rand() % 20000);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        assert_true(WIFSIGNALED(status));
        lorad_checkpoint_clean_temp(root);
        int64_t step;
        char path[4096];
        int r = lorad_checkpoint_latest(root, &step, path, sizeof path);
        if (r == 0) continue; /* killed before the first commit */
        assert_int_equal(r, 1);
        char state_path[4200], want[64], got[64] = "";
        snprintf(state_path, sizeof state_path, "%s/state", path);
        FILE *f = fopen(state_path, "r");
        assert_non_null(f);
        assert_non_null(fgets(got, sizeof got, f));
        fclose(f);
        snprintf(want, sizeof want, "step %lld\n", (long long)step);
        assert_string_equal(got, want);
        struct stat st;
        snprintf(state_path, sizeof state_path, "%s/adapter", path);
        assert_int_equal(stat(state_path, &st), 0);
        assert_int_equal(st.st_size, 16 * 4096);
    }
    free(root);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_rotate_latest),
        cmocka_unit_test(test_sigkill_never_leaves_partial_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
