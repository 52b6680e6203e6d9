/* Helpers shared by the loader tests: finding a tensor of struct lorad_base_weights by its HF
 * name, writing byte buffers to files, and generating the Python fixtures. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "weights.h"

/* The view of w called name in HF spelling ("model.layers.1.mlp.up_proj.weight"); NULL if none. */
const struct lorad_tensor *fmt_hf_tensor(const struct lorad_base_weights *w, const char *name);
/* Value i of a view as float (F32, BF16 or F16). */
float fmt_tensor_get(const struct lorad_tensor *t, int64_t i);
/* Runs tests/formats/write_fixtures.py into dir (fails the test on error). */
void fmt_write_fixtures(const char *dir);
