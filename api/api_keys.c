#include "api_keys.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dataset.h"

/* Every key sits zero-padded in a fixed slot, so a check reads the same bytes whatever the keys
 * are; a key has no NUL (it is refused as a control character), so padding cannot make two
 * different keys equal. */
struct key_set {
    size_t n;
    size_t len[LORAD_API_MAX_KEYS];
    unsigned char key[LORAD_API_MAX_KEYS][LORAD_API_MAX_KEY_BYTES];
};

struct lorad_api_keys {
    pthread_rwlock_t lock; /* guards set: checks read it, a swap replaces it */
    struct key_set *set;   /* NULL: authentication off */
    char path[PATH_MAX];   /* the file in use; "" with authentication off. Main thread only. */
};

/* Frees set (NULL is fine) after wiping it, so freed memory holds no key. */
static void set_free(struct key_set *set) {
    if (!set) return;
    explicit_bzero(set, sizeof *set);
    free(set);
}

/* Why byte c cannot be in a key, or NULL when it can. Bytes >= 0x80 are allowed: the old loader
 * took them and a client can send them; a space, tab or control character cannot be told apart
 * from the file's own layout or a mangled header. */
static const char *bad_key_byte(unsigned char c, char *buf, size_t cap) {
    if (c == ' ') return "a space";
    if (c == '\t') return "a tab";
    if (c < 0x20 || c == 0x7f) {
        snprintf(buf, cap, "control character 0x%02x", c);
        return buf;
    }
    return NULL;
}

/* Reads the whole key file at path into a new set. Returns 0 and *ret_set (the caller frees it
 * with set_free), or -errno with err naming the file and, for a refused line, the line. The file
 * is taken whole or not at all, so one bad line never leaves the daemon on part of a file. */
static int load_set(const char *path, struct key_set **ret_set, struct lorad_error *err) {
    struct lorad_line_reader *rd = NULL;
    int r = lorad_line_reader_open(&rd, path, LORAD_API_MAX_KEY_LINE_BYTES, NULL);
    if (r < 0)
        return lorad_error_set(err, r, "api_key_file", "cannot read api_key_file %s: %s", path, strerror(-r));
    struct key_set *set = calloc(1, sizeof *set);
    if (!set) {
        lorad_line_reader_free(rd);
        return lorad_error_set(err, -ENOMEM, "api_key_file", "api_key_file %s: out of memory", path);
    }
    const char *line;
    size_t len;
    int64_t lineno = 0;
    bool too_long;
    while ((r = lorad_line_reader_next(rd, &line, &len, &lineno, &too_long)) > 0) {
        /* The reader skips the rest of an over-long line rather than storing it, so its content
         * is unknown here: a comment or a key, it is refused rather than guessed at. */
        if (too_long) {
            r = lorad_error_set(err, -E2BIG, "api_key_file",
                                "api_key_file %s line %lld: line longer than %d bytes (a key is at most %d bytes)",
                                path, (long long)lineno, LORAD_API_MAX_KEY_LINE_BYTES, LORAD_API_MAX_KEY_BYTES);
            goto out;
        }
        while (len && (*line == ' ' || *line == '\t')) line++, len--;
        while (len && (line[len - 1] == ' ' || line[len - 1] == '\t')) len--;
        if (len == 0 || line[0] == '#') continue;
        if (len > LORAD_API_MAX_KEY_BYTES) {
            r = lorad_error_set(err, -E2BIG, "api_key_file",
                                "api_key_file %s line %lld: key is %zu bytes, longer than the %d-byte limit", path,
                                (long long)lineno, len, LORAD_API_MAX_KEY_BYTES);
            goto out;
        }
        const char *why = NULL;
        char desc[32];
        size_t at = 0;
        while (at < len && !(why = bad_key_byte((unsigned char)line[at], desc, sizeof desc))) at++;
        if (why) {
            r = lorad_error_set(err, -EINVAL, "api_key_file",
                                "api_key_file %s line %lld: byte %zu of the key is %s; a key cannot contain spaces "
                                "or control characters",
                                path, (long long)lineno, at + 1, why);
            goto out;
        }
        if (set->n == LORAD_API_MAX_KEYS) {
            r = lorad_error_set(err, -E2BIG, "api_key_file",
                                "api_key_file %s line %lld: more than %d keys; a file has at most %d", path,
                                (long long)lineno, LORAD_API_MAX_KEYS, LORAD_API_MAX_KEYS);
            goto out;
        }
        memcpy(set->key[set->n], line, len);
        set->len[set->n++] = len;
    }
    if (r < 0) r = lorad_error_set(err, r, "api_key_file", "cannot read api_key_file %s: %s", path, strerror(-r));
out:
    lorad_line_reader_free(rd);
    if (r < 0) {
        set_free(set);
        return r;
    }
    *ret_set = set;
    return 0;
}

int lorad_api_keys_open(const char *path, struct lorad_api_keys **ret_keys, struct lorad_error *err) {
    struct lorad_api_keys *keys = calloc(1, sizeof *keys);
    if (!keys) return lorad_error_set(err, -ENOMEM, "api_key_file", "api keys: out of memory");
    int r = pthread_rwlock_init(&keys->lock, NULL);
    if (r != 0) {
        free(keys);
        return lorad_error_set(err, -r, "api_key_file", "api keys: cannot create the lock: %s", strerror(r));
    }
    if ((r = lorad_api_keys_use_file(keys, path ? path : "", err)) < 0) {
        lorad_api_keys_free(keys);
        return r;
    }
    *ret_keys = keys;
    return 0;
}

int lorad_api_keys_use_file(struct lorad_api_keys *keys, const char *path, struct lorad_error *err) {
    size_t plen = strlen(path);
    if (plen >= sizeof keys->path)
        return lorad_error_set(err, -ENAMETOOLONG, "api_key_file", "api_key_file %.64s...: path longer than %zu bytes",
                               path, sizeof keys->path - 1);
    struct key_set *set = NULL;
    if (path[0]) {
        int r = load_set(path, &set, err);
        if (r < 0) return r;
    }
    pthread_rwlock_wrlock(&keys->lock);
    struct key_set *old = keys->set;
    keys->set = set;
    pthread_rwlock_unlock(&keys->lock);
    memmove(keys->path, path, plen + 1); /* path may be keys->path itself (reload) */
    set_free(old);
    return 0;
}

int lorad_api_keys_reload(struct lorad_api_keys *keys, struct lorad_error *err) {
    if (!keys->path[0]) return 0;
    return lorad_api_keys_use_file(keys, keys->path, err);
}

size_t lorad_api_keys_count(struct lorad_api_keys *keys) {
    pthread_rwlock_rdlock(&keys->lock);
    size_t n = keys->set ? keys->set->n : 0;
    pthread_rwlock_unlock(&keys->lock);
    return n;
}

/* Whether token is one of set's keys, in time that depends on nothing secret: every slot is
 * compared over all LORAD_API_MAX_KEY_BYTES bytes (the unused ones too, so the key count does not
 * show either), differences are ORed together and nothing exits early. Only the token's own
 * length decides anything up front, and the client knows that already. */
static bool set_matches(const struct key_set *set, const char *token) {
    size_t tlen = strnlen(token, LORAD_API_MAX_KEY_BYTES + 1);
    if (tlen > LORAD_API_MAX_KEY_BYTES) return false;
    unsigned char given[LORAD_API_MAX_KEY_BYTES] = {0};
    memcpy(given, token, tlen);
    uint32_t found = 0;
    for (size_t i = 0; i < LORAD_API_MAX_KEYS; i++) {
        uint32_t diff = (uint32_t)(set->len[i] ^ tlen) | (uint32_t)(i >= set->n);
        for (size_t j = 0; j < LORAD_API_MAX_KEY_BYTES; j++) diff |= (uint32_t)(set->key[i][j] ^ given[j]);
        found |= (diff - 1) >> 31; /* 1 when diff is 0 (diff < 2^9), without a branch */
    }
    explicit_bzero(given, sizeof given);
    return found != 0;
}

unsigned lorad_api_keys_verdict(struct lorad_api_keys *keys, const char *authorization) {
    if (!keys) return 0;
    unsigned verdict = 0;
    pthread_rwlock_rdlock(&keys->lock);
    if (keys->set) {
        if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) verdict = 401;
        else if (!set_matches(keys->set, authorization + 7)) verdict = 403;
    }
    pthread_rwlock_unlock(&keys->lock);
    return verdict;
}

void lorad_api_keys_free(struct lorad_api_keys *keys) {
    if (!keys) return;
    set_free(keys->set);
    pthread_rwlock_destroy(&keys->lock);
    free(keys);
}
