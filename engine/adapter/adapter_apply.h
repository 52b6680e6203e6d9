/* Putting a loaded adapter into an engine model: the LoRA configuration its tensors call for,
 * and copying its tensors into the model's flat LoRA buffer. */
#pragma once
#include "adapter_read.h"
#include "error.h"
#include "lora.h"
#include "model.h"

/* The LoRA configuration a's tensors call for: its rank, alpha and rsLoRA flag, no dropout, and
 * the modules that actually carry tensors (more robust than target_modules, which PEFT also lets
 * be a regex or full module names). Returns 0 with *ret, or -EINVAL with err (param "adapter")
 * naming the file when the configuration is not one lorad can apply. */
int lorad_adapter_lora_config(const struct lorad_adapter *a, struct lorad_lora_config *ret, struct lorad_error *err);

/* Copies every tensor of a into m's LoRA buffers (lorad_model_set_lora_tensor); modules a does
 * not carry keep what m holds. Returns 0, or the first failure (-ENOENT: m has no such LoRA
 * tensor; -EINVAL: shape) with err naming the tensor. */
int lorad_adapter_copy_into(const struct lorad_adapter *a, struct lorad_model *m, struct lorad_error *err);

/* Makes m compute exactly a: every LoRA parameter of m zeroed, then a's tensors copied in, so
 * modules or layers a leaves out contribute nothing. m must have been built with (at least) the
 * configuration lorad_adapter_lora_config gives. Returns 0 or copy_into's error (param
 * "adapter"). */
int lorad_adapter_install(const struct lorad_adapter *a, struct lorad_model *m, struct lorad_error *err);
