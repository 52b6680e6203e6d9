/* Pieces shared by the model loaders (safetensors/HF, GGUF, llama2.c): the load mode,
 * the owner object behind a struct lorad_base_weights, and the Meta <-> HF RoPE row permutation.
 *
 * A loader allocates one struct lorad_load_owner, attaches every mapping and buffer its tensors
 * point into, and sets weights->release = lorad_load_owner_release, weights->owner = owner. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "map_file.h"
#include "weights.h"

/* Source dtypes as found in the file ("F32", "BF16", "Q8_0", ...), counted per tensor. */
#define LORAD_LOAD_MAX_DTYPES 8
struct lorad_dtype_count {
    char name[16];
    int count;
};

/* What a loader does with the tensors it must convert (dequantise, widen, permute): WEIGHTS
 * converts them into owned buffers; PROBE only counts the bytes the converted copies would take
 * and leaves every tensor pointing at its source bytes (right shape and engine dtype, wrong
 * encoding: no tensor data may be read), so a model can be sized (memory estimates, job
 * admission) without the time and memory of converting it. */
enum lorad_load_mode {
    LORAD_LOAD_WEIGHTS = 0,
    LORAD_LOAD_PROBE = 1,
};

struct lorad_load_owner {
    enum lorad_load_mode mode;
    struct lorad_layer_weights *layers; /* n_layers entries */
    struct lorad_owned_item { void (*free_fn)(void *); void *ptr; } *items;
    size_t n_items, cap_items;
    struct lorad_dtype_count dtypes[LORAD_LOAD_MAX_DTYPES];
    int n_dtypes;
    size_t owned_bytes;  /* bytes of loader-owned buffers (converted tensors, vocabulary); with
                          * PROBE, the bytes the converted tensors would take */
    size_t mapped_bytes; /* bytes of tensors used in place from a mapping */
};

/* Creates an owner with a zeroed layers array of n_layers entries. Returns NULL on ENOMEM. */
struct lorad_load_owner *lorad_load_owner_new(int n_layers, enum lorad_load_mode mode);
/* Attaches ptr, freed by free_fn (in reverse order of attachment) at release. On ENOMEM, ptr is
 * freed at once and -ENOMEM returned, so callers never leak. */
int lorad_load_owner_attach(struct lorad_load_owner *o, void (*free_fn)(void *), void *ptr);
/* malloc(n) attached to o; counts n in owned_bytes. NULL on ENOMEM. */
void *lorad_load_owner_alloc(struct lorad_load_owner *o, size_t n);
/* Counts one tensor of source dtype name in the summary. */
void lorad_load_owner_note_dtype(struct lorad_load_owner *o, const char *name);
/* The release function stored in struct lorad_base_weights (frees everything, then o itself). */
void lorad_load_owner_release(void *owner);

/* Installs o as w's owner and layers array. */
void lorad_load_owner_install(struct lorad_load_owner *o, struct lorad_base_weights *w);

/* RoPE row layouts. Meta (llama2.c, GGUF) rotates interleaved pairs (x[2i], x[2i+1]) of each
 * head; Hugging Face rotates halves (x[i], x[i + hd/2]). Within one head of head_dim rows:
 *     HF row  half*(hd/2) + i   ==   Meta row  2*i + half      (half in {0,1}, i < hd/2)
 * HF's convert script builds HF from Meta with w.view(n_heads, hd/2, 2, in).transpose(1, 2);
 * llama.cpp's converter builds Meta from HF with w.reshape(n_heads, 2, hd/2, in).swapaxes(1, 2).
 * These give the row index maps below (r is a row index of the whole q or k matrix). */
static inline int64_t lorad_rope_meta_row_of_hf_row(int64_t r, int head_dim) {
    int64_t h = r / head_dim, j = r % head_dim, half = j / (head_dim / 2), i = j % (head_dim / 2);
    return h * head_dim + 2 * i + half;
}
static inline int64_t lorad_rope_hf_row_of_meta_row(int64_t r, int head_dim) {
    int64_t h = r / head_dim, j = r % head_dim, i = j / 2, half = j % 2;
    return h * head_dim + half * (head_dim / 2) + i;
}

/* Copies rows of row_bytes bytes from src to dst, moving Meta-layout rows to HF layout
 * (to_hf != 0) or HF to Meta (to_hf == 0). rows must be a multiple of head_dim (even). */
void lorad_rope_permute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int head_dim,
                             int to_hf);
