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

#endif /* KQ_PROJECTIONS_INTERNAL_H */
