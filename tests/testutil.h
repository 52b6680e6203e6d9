/* Shared helpers for lorad's cmocka tests: temporary directories, paths to shared data and the
 * reference interpreter, and running a child command. Kept tiny on purpose. */
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Creates a fresh directory under $TMPDIR (or /tmp) and returns its malloc'd path. The caller
 * owns the string and removes the tree with test_rmtree(). Fails the test on error. */
char *test_mkdtemp(const char *tag);

/* Removes a directory tree created by test_mkdtemp(); ignores errors. */
void test_rmtree(const char *path);

/* Joins dir and name into a malloc'd path owned by the caller. */
char *test_path(const char *dir, const char *name);

/* Path of a file in ../shared/data; a static string, valid for the whole run. */
const char *test_shared_data(const char *name);

/* Runs argv[0] with argv through fork/exec and returns its exit status (or 128+signal). */
int test_run(char *const argv[]);

/* Reads a whole file into a malloc'd buffer (NUL-terminated, owned by the caller); fails the test
 * when it cannot. */
void *test_read_file(const char *path, size_t *ret_len);

/* Writes len bytes to path (created or truncated); fails the test when it cannot. */
void test_write_file(const char *path, const void *data, size_t len);
