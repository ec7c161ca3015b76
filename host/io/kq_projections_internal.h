/*
 * kq_projections_internal.h — in-library access to projection sets
 * (include/kqsvd.h, "Projections") that the public API does not offer:
 * read-only layer views from a const object, for the backend core that
 * uploads projections to a device.
 */
#ifndef KQ_PROJECTIONS_INTERNAL_H
#define KQ_PROJECTIONS_INTERNAL_H

#include <stdint.h>

#include "kqsvd.h"

/* Host views of layer `layer` of `proj`, exactly as kq_projections_layer()
 * gives them, from a const object: the pointers alias the projection set's
 * own storage (valid until kq_projections_destroy) and must be treated as
 * read-only. Each matrix is [n_kv_heads, head_dim, rank] row-major float32,
 * spectra [n_kv_heads, head_dim].
 * Errors: KQ_ERR_INVALID_ARGUMENT for NULL arguments or a layer outside
 * [0, n_layers). */
kq_status kq_projections_layer_view(const kq_projections *proj, int32_t layer,
                                    kq_projection_layer *out_layer);

/* The model a projection set was fitted for (SPEC §1b metadata model_name,
 * model_sha256): the GGUF's general.name and the SHA-256 of the whole GGUF
 * file (64 lowercase hex digits, as sha256sum prints it). Empty strings:
 * unknown (files written before identities were recorded). */
typedef struct kq_model_identity {
  char name[128]; /* longer names are cut */
  char sha256[65];
} kq_model_identity;

/* Sets the identity kq_projections_save writes (copied; NULL clears it).
 * KQ_ERR_INVALID_ARGUMENT when sha256 is neither empty nor 64 hex digits. */
kq_status kq_projections_set_model(kq_projections *proj, const kq_model_identity *id);

/* The identity read from the file or set; never NULL for a valid proj. */
const kq_model_identity *kq_projections_get_model(const kq_projections *proj);

/* 1 when s is 64 lowercase hex digits. */
int kq_model_sha256_valid(const char *s);

#endif /* KQ_PROJECTIONS_INTERNAL_H */
