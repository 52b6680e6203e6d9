/* API key hashes. The key itself never reaches the store: the daemon hashes it first. */
#include <errno.h>
#include <string.h>

#include "store_internal.h"

static bool sha256_hex_valid(const char *h) {
    if (!h || strlen(h) != 64) return false;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
    return true;
}

int lorad_store_api_key_add(struct lorad_store *s, const char *name, const char *sha256_hex,
                            struct lorad_error *err) {
    if (!name || !*name || strlen(name) > 128)
        return lorad_error_set(err, -EINVAL, "name", "name must be 1..128 bytes");
    if (!sha256_hex_valid(sha256_hex))
        return lorad_error_set(err, -EINVAL, "sha256", "must be 64 lowercase hex digits");
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO api_keys(name, key_sha256, created_at) VALUES (?1, ?2, ?3)", &r, err);
    if (st) {
        store_bind_text(c, st, 1, name);
        store_bind_text(c, st, 2, sha256_hex);
        store_bind_int64(c, st, 3, store_now());
        r = store_step(c, st, "cannot store api key", err);
        store_stmt_done(st);
        if (r == -EEXIST) lorad_error_set(err, r, "sha256", "this key is already stored");
    }
    r = store_tx_end(s, c, r, err);
out:
    store_release(s, c);
    return r;
}

int lorad_store_api_key_check(struct lorad_store *s, const char *sha256_hex,
                              struct lorad_error *err) {
    if (!sha256_hex_valid(sha256_hex)) return 0;
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    sqlite3_stmt *st = store_stmt(c,
        "SELECT 1 FROM api_keys WHERE key_sha256 = ?1 AND revoked_at IS NULL", &r, err);
    if (st) {
        store_bind_text(c, st, 1, sha256_hex);
        r = store_step(c, st, "cannot check api key", err);
        store_stmt_done(st);
    }
    store_release(s, c);
    return r;
}
