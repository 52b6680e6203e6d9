#include "batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int lorad_batch_alloc(struct lorad_batch *b, int cap_B, int cap_T) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)cap_B * (size_t)cap_T;
    b->tokens = malloc(n * sizeof(int32_t));
    b->labels = malloc(n * sizeof(int32_t));
    b->positions = malloc(n * sizeof(int32_t));
    b->seg_start = malloc(n * sizeof(int32_t));
    if (!b->tokens || !b->labels || !b->positions || !b->seg_start) {
        lorad_batch_free(b);
        return -ENOMEM;
    }
    b->cap_B = cap_B;
    b->cap_T = cap_T;
    return 0;
}

void lorad_batch_free(struct lorad_batch *b) {
    free(b->tokens);
    free(b->labels);
    free(b->positions);
    free(b->seg_start);
    memset(b, 0, sizeof *b);
}
