/* Loading LoRA adapters back from disk: a PEFT directory (adapter_config.json +
 * adapter_model.safetensors, F32/BF16/F16 tensors), an adapter.tar (a tar archive of one such
 * directory, as the API serves it) or a llama.cpp GGUF LoRA file. The result is an
 * owned list of f32 tensors in PEFT naming WITHOUT the "base_model.model." prefix and in HF row
 * order (GGUF's q/k lora_B rows are moved back from Meta's interleaved RoPE order).
 *
 * Validation (against a base config when one is given) refuses anything lorad would not apply
 * exactly as PEFT does: unknown tensors (lora_embedding_*, modules_to_save, biases), layer
 * indices out of range, a module with only one of lora_A / lora_B, DoRA magnitudes in some
 * modules but not all or against the config's use_dora, a rank other than r, or in/out sizes
 * that do not match the base projection. */
#pragma once
#include "adapter.h"
#include "error.h"
#include "llama_config.h"

/* Upper bound on the tensors an adapter may hold: A, B and a DoRA magnitude for 7 projections of
 * every layer and for lm_head. */
#define LORAD_ADAPTER_MAX_TENSORS (3 * (7 * LORAD_MAX_LAYERS + 1))

/* Upper bound on one member of an adapter.tar (the safetensors of a rank-1024 all-linear adapter of a
 * 70B base is ~16 GB in F32; anything bigger is not an adapter). */
#define LORAD_ADAPTER_MAX_TAR_MEMBER (32ull << 30)

struct lorad_adapter {
    char *path;                          /* what was loaded (dir, .tar or .gguf) */
    struct lorad_adapter_meta meta;      /* from adapter_config.json; for GGUF: r from lora_a, alpha
                                          * from adapter.lora.alpha, use_rslora false (GGUF stores
                                          * rsLoRA's alpha already multiplied by sqrt(r)) */
    int n_tensors;
    struct lorad_adapter_tensor *tensors; /* each data is a malloc'd f32 buffer owned by the adapter */
};

/* Loads path: a directory is read as PEFT, a regular file with ustar magic (at byte 257: POSIX or GNU) as an
 * adapter.tar, a file starting with "GGUF" as a llama.cpp LoRA. An adapter.tar is read in place (the
 * archive is mapped; no temporary files): its members adapter_config.json and
 * adapter_model.safetensors (matched by file name, in whatever folder) must be regular files, appear once,
 * and pass the same checks as in a directory; other members are ignored. ustar, pax (GNU tar
 * --format=pax/--posix, macOS tar) and GNU-format archives are read: a pax 'x' header's path and
 * size records replace the next member's name and size (other keys are ignored), a GNU 'L' header
 * gives the next member's name, 'g' and 'K' headers are checked and skipped. Malformed pax records
 * (length field, '=', trailing newline), extended headers over 64 KiB or paths over 4095 bytes,
 * sparse members, truncated headers or members, bad checksums or size fields, and members larger
 * than LORAD_ADAPTER_MAX_TAR_MEMBER are refused with err naming the archive, the problem and, for
 * headers, the byte offset.
 * cfg is the base model's config. With cfg == NULL only the structure is checked (names, pairs,
 * rank), which is enough for re-writing a PEFT dir; a GGUF adapter needs cfg (head_dim for the
 * RoPE rows) and fails with -EINVAL without one. Returns 0 and *ret_adapter (owned by the caller,
 * freed with lorad_adapter_free), or -errno with err naming the file, the tensor and, for shape
 * errors, expected vs got. */
int lorad_adapter_load(const char *path, const struct lorad_llama_config *cfg, struct lorad_adapter **ret_adapter,
                       struct lorad_error *err);

/* Frees the adapter and its tensor buffers. Safe on NULL. */
void lorad_adapter_free(struct lorad_adapter *a);

/* The tensor called name (unprefixed, e.g. "model.layers.0.self_attn.q_proj.lora_A.weight"),
 * or NULL. Owned by a. */
const struct lorad_adapter_tensor *lorad_adapter_find(const struct lorad_adapter *a, const char *name);

/* The A (r, in) and B (out, r) matrices of module (e.g. "model.layers.3.mlp.up_proj" or
 * "lm_head"): 0 and both pointers (owned by a), or -ENOENT when the module is not adapted. */
int lorad_adapter_module(const struct lorad_adapter *a, const char *module, const struct lorad_adapter_tensor **ret_A,
                         const struct lorad_adapter_tensor **ret_B);

/* Checks a list of adapter tensors against r and, when cfg is non-NULL, the base shapes, exactly
 * as lorad_adapter_load does; source names the file in errors. Returns 0 or -EINVAL. */
int lorad_adapter_validate(const struct lorad_adapter_tensor *tensors, int n_tensors, int r,
                           const struct lorad_llama_config *cfg, const char *source, struct lorad_error *err);
