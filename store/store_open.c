/* lorad_store_open and lorad_store_close: the first connection, the schema migrated (or checked
 * when read-only), and at a daemon's start the integrity check and recovery of interrupted jobs. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

/* ---- open / close ------------------------------------------------------------------------- */

static int quick_check(struct store_conn *c, const char *path, struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "PRAGMA quick_check", &r, err);
    if (!st) return r;
    r = store_step(c, st, path, err);
    if (r == 1) {
        const char *res = (const char *)sqlite3_column_text(st, 0);
        if (!res || strcmp(res, "ok") != 0)
            r = lorad_error_set(err, -EBADMSG, "", "%s: database is corrupt: %s", path,
                                res ? res : "?");
        else
            r = 0;
    } else if (r == 0) {
        r = lorad_error_set(err, -EBADMSG, "", "%s: quick_check returned nothing", path);
    }
    store_stmt_done(st);
    return r;
}

int lorad_store_open(const char *path, const struct lorad_store_options *opts,
                     struct lorad_store **ret_store, struct lorad_error *err) {
    if (!path || !*path) return lorad_error_set(err, -EINVAL, "path", "empty database path");
    struct lorad_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    if (opts) s->opts = *opts;
    if (s->opts.busy_timeout_ms <= 0) s->opts.busy_timeout_ms = 5000;
    if (s->opts.pool_max <= 0) s->opts.pool_max = 16;
    pthread_mutex_init(&s->pool_lock, NULL);
    pthread_cond_init(&s->pool_cond, NULL);
    pthread_mutex_init(&s->write_lock, NULL);

    struct store_conn *c = NULL;
    int r = store_conn_open(s, true, &c, err);
    if (r < 0) goto fail;
    s->n_open = 1;
    if (s->opts.flags & LORAD_STORE_READONLY) {
        int version = 0;
        r = store_read_user_version(c->db, &version, path, err);
        if (r == 0 && version != store_schema_latest)
            r = lorad_error_set(err, -EPROTO, "",
                                "%s: schema version %d, this lorad needs %d (open it read-write "
                                "once to migrate, or upgrade lorad)",
                                path, version, store_schema_latest);
    } else {
        r = store_migrate(c->db, store_schema_latest, path, err);
    }
    if (r == 0 && (s->opts.flags & LORAD_STORE_RECOVER)) {
        r = quick_check(c, path, err);
        if (r == 0) {
            r = store_tx_begin(s, c, err);
            if (r == 0) r = store_tx_end(s, c, store_recover_tx(c, err), err);
        }
    }
    if (r < 0) goto fail;
    s->idle = c;
    *ret_store = s;
    return 0;
fail:
    store_conn_close(c);
    s->n_open = 0;
    lorad_store_close(s);
    return r;
}

void lorad_store_close(struct lorad_store *s) {
    if (!s) return;
    assert(s->n_open == 0 || s->idle);
    int closed = 0;
    while (s->idle) {
        struct store_conn *c = s->idle;
        s->idle = c->next_idle;
        store_conn_close(c);
        closed++;
    }
    assert(closed == s->n_open && "lorad_store_close with a call in flight");
    pthread_mutex_destroy(&s->pool_lock);
    pthread_cond_destroy(&s->pool_cond);
    pthread_mutex_destroy(&s->write_lock);
    free(s->path);
    free(s);
}

int64_t lorad_store_sqlite_memory_used(void) { return (int64_t)sqlite3_memory_used(); }
