/* The model part of a reference case file (docs/reference-interchange.md), shared by the tests
 * that meet the PyTorch references in tests/reference/ through such files. */
#pragma once

#include "model.h"
#include "safetensors_write.h"
#include "tiny_model.h"

/* Adds to w the __metadata__ "config" (tm's HF config) and "lora" (lc, without dropout: the
 * references cannot draw the engine's masks), the base tensors of tm under their HF names and m's
 * LoRA tensors under their PEFT names with the values init (in m's flat layout). */
void ref_case_write_model(struct lorad_st_writer *w, const struct tiny_model *tm, const struct lorad_model *m,
                          const struct lorad_lora_config *lc, const float *init);
