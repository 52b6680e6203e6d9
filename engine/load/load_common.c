#include "load_common.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct lorad_load_owner *lorad_load_owner_new(int n_layers, enum lorad_load_mode mode) {
    assert(n_layers >= 0);
    struct lorad_load_owner *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->mode = mode;
    o->layers = calloc(n_layers > 0 ? (size_t)n_layers : 1, sizeof *o->layers);
    if (!o->layers) {
        free(o);
        return NULL;
    }
    return o;
}

int lorad_load_owner_attach(struct lorad_load_owner *o, void (*free_fn)(void *), void *ptr) {
    if (o->n_items == o->cap_items) {
        size_t cap = o->cap_items ? 2 * o->cap_items : 16;
        struct lorad_owned_item *items = realloc(o->items, cap * sizeof *items);
        if (!items) {
            free_fn(ptr);
            return -ENOMEM;
        }
        o->items = items;
        o->cap_items = cap;
    }
    o->items[o->n_items++] = (struct lorad_owned_item){free_fn, ptr};
    return 0;
}

void *lorad_load_owner_alloc(struct lorad_load_owner *o, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || lorad_load_owner_attach(o, free, p) < 0) return NULL;
    o->owned_bytes += n;
    return p;
}

void lorad_load_owner_note_dtype(struct lorad_load_owner *o, const char *name) {
    for (int i = 0; i < o->n_dtypes; i++)
        if (strcmp(o->dtypes[i].name, name) == 0) {
            o->dtypes[i].count++;
            return;
        }
    if (o->n_dtypes == LORAD_LOAD_MAX_DTYPES) return; /* summary only: drop exotic extras */
    struct lorad_dtype_count *d = &o->dtypes[o->n_dtypes++];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->count = 1;
}

void lorad_load_owner_release(void *owner) {
    struct lorad_load_owner *o = owner;
    if (!o) return;
    for (size_t i = o->n_items; i-- > 0;) o->items[i].free_fn(o->items[i].ptr);
    free(o->items);
    free(o->layers);
    free(o);
}

void lorad_load_owner_install(struct lorad_load_owner *o, struct lorad_base_weights *w) {
    w->layers = o->layers;
    w->owner = o;
    w->release = lorad_load_owner_release;
}

void lorad_rope_permute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int head_dim,
                             int to_hf) {
    assert(head_dim > 0 && head_dim % 2 == 0 && rows % head_dim == 0);
    for (int64_t r = 0; r < rows; r++) {
        /* src row r goes to its row index in the other layout */
        int64_t d = to_hf ? lorad_rope_hf_row_of_meta_row(r, head_dim) : lorad_rope_meta_row_of_hf_row(r, head_dim);
        memcpy((uint8_t *)dst + (size_t)d * row_bytes, (const uint8_t *)src + (size_t)r * row_bytes, row_bytes);
    }
}
