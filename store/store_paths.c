/* The one convention for blob paths kept in the store: relative to the state directory when the
 * blob lies inside it (so the state directory can move), absolute otherwise. Pure string work:
 * the store still does no blob I/O. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

const char *lorad_store_path_relative(const char *state_dir, const char *abs_path) {
    size_t n = state_dir ? strlen(state_dir) : 0;
    while (n > 1 && state_dir[n - 1] == '/') n--;
    if (!n || strncmp(abs_path, state_dir, n) != 0 || abs_path[n] != '/') return abs_path;
    const char *rel = abs_path + n;
    while (*rel == '/') rel++; /* "STATE//files/x" (a state_dir given with a trailing '/') too */
    return *rel ? rel : abs_path;
}

int lorad_store_path_absolute(const char *state_dir, const char *stored, const char *name, char *out, size_t cap) {
    const char *base = stored[0] == '/' || !state_dir ? "" : state_dir;
    int w = snprintf(out, cap, "%s%s%s%s%s", base, base[0] ? "/" : "", stored, name ? "/" : "", name ? name : "");
    return w < 0 || (size_t)w >= cap ? -ENAMETOOLONG : 0;
}
