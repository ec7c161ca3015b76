/*
 * kq_eval.h — internal pieces of host/eval: kq_eval (SPEC §3 fidelity
 * metrics), which reads calibration files through host/fit and, with
 * --device, runs the projected attention through a device cache.
 */
#ifndef KQ_EVAL_H
#define KQ_EVAL_H

#include "kq_fit.h"
#include "kqsvd.h"

/* Softmax and output metrics of one layer over the first n_seqs sequences
 * (SPEC §3): causal attention inside each sequence, exact vs projected.
 * cache != NULL: the projected outputs come from the device (append +
 * attend of this layer, truncated to 0 per sequence); the softmax metric is
 * always the host's (the device returns outputs, not P). Sums of squares are
 * returned so layers/heads pool before the ratio. */
kq_status kq_eval_attention(const kq_calib *calib, const kq_calib_layer *layer,
                            const kq_projection_layer *proj, int32_t layer_index, int32_t n_seqs,
                            kq_cache *cache, int n_threads, const volatile int *cancel,
                            double out_softmax[2], double out_output[2]);

#endif /* KQ_EVAL_H */
