/*
 * vk_split.h — how a decode dispatch splits the context into chunks (pure
 * functions, no Vulkan: tests call them with pretend devices).
 */
#ifndef KQ_VK_SPLIT_H
#define KQ_VK_SPLIT_H

#include <stdint.h>

/* Workgroups a decode dispatch aims for per compute unit: two resident
 * workgroups per CU plus slack for the tail (chunks of unequal cost). */
#define VK_DECODE_WG_PER_CU 4u
/* Most chunks per (query, head): the merge kernel keeps one weight per chunk
 * in shared memory. */
#define VK_DECODE_MAX_CHUNKS 1024u

/* Chunks per (query, row group) of a decode dispatch over `row_groups` ×
 * `n_queries` workgroup rows, on a device with `n_cus` compute units: enough
 * chunks that the grid holds VK_DECODE_WG_PER_CU · n_cus workgroups, at most
 * one per position and at most VK_DECODE_MAX_CHUNKS. There is no chunk
 * floor: a short context is still spread over the whole device (a chunk
 * shorter than a workgroup's step leaves some of its lanes idle, which costs
 * less than idle compute units). Returns >= 1; vk_decode_chunk_len gives
 * their length, every chunk non-empty. */
static inline uint32_t vk_decode_chunks(uint64_t n_ctx, uint32_t row_groups, uint32_t n_queries,
                                        uint32_t n_cus) {
  const uint64_t rows = (uint64_t)(row_groups ? row_groups : 1) * (n_queries ? n_queries : 1);
  const uint64_t target = (uint64_t)VK_DECODE_WG_PER_CU * (n_cus ? n_cus : 1);
  uint64_t n = (target + rows - 1) / rows;
  if (n > n_ctx) n = n_ctx;
  if (n > VK_DECODE_MAX_CHUNKS) n = VK_DECODE_MAX_CHUNKS;
  if (n < 1) n = 1;
  /* Equal chunks of ceil(n_ctx / n) positions: none of them empty. */
  const uint64_t len = (n_ctx + n - 1) / n;
  n = len ? (n_ctx + len - 1) / len : 1;
  return n < 1 ? 1u : (uint32_t)n;
}

/* Chunks of one sequence of a batched decode dispatch: the grid's work is
 * `total_positions` (the sum over every query row of its context length)
 * over `row_groups` workgroup rows; a sequence of n_ctx positions gets its
 * share of the VK_DECODE_WG_PER_CU · n_cus workgroups in proportion to
 * n_ctx, so chunks are about equally long across sequences. With one
 * sequence of n_queries rows (total_positions = n_queries · n_ctx) this is
 * vk_decode_chunks. Same bounds: at most one per position and
 * VK_DECODE_MAX_CHUNKS, at least 1, every chunk non-empty. */
static inline uint32_t vk_decode_seq_chunks(uint64_t n_ctx, uint64_t total_positions,
                                            uint32_t row_groups, uint32_t n_cus) {
  const uint64_t target = (uint64_t)VK_DECODE_WG_PER_CU * (n_cus ? n_cus : 1);
  const uint64_t work = (uint64_t)(row_groups ? row_groups : 1) *
                        (total_positions > n_ctx ? total_positions : (n_ctx ? n_ctx : 1));
  uint64_t n = (target * n_ctx + work - 1) / work;
  if (n > n_ctx) n = n_ctx;
  if (n > VK_DECODE_MAX_CHUNKS) n = VK_DECODE_MAX_CHUNKS;
  if (n < 1) n = 1;
  const uint64_t len = (n_ctx + n - 1) / n;
  n = len ? (n_ctx + len - 1) / len : 1;
  return n < 1 ? 1u : (uint32_t)n;
}

/* Back edges after which Mesa llvmpipe (lavapipe) ends a shader
 * invocation's loops, all of its loops counted together (its guard against
 * endless loops): the invocation then goes on past them with whatever its
 * sums hold, with no error. A chunk of positions that needs more steps
 * comes out silently wrong, so on that driver the chunk length is capped
 * (vk_loop_chunk_cap). */
#define VK_LLVMPIPE_LOOP_LIMIT 65535u

/* Most positions one chunk may hold when a shader invocation may take at
 * most `limit` back edges in all (0: no limit, UINT64_MAX) and a step of
 * the chunk's loop covers `step_positions` positions at `edges_per_step`
 * back edges (an upper bound). Half the limit goes to the chunk's loop,
 * the other half is left for the loops around it. 0 when not even one
 * step fits. */
static inline uint64_t vk_loop_chunk_cap(uint32_t limit, uint64_t edges_per_step,
                                         uint64_t step_positions) {
  if (!limit) return UINT64_MAX;
  return (uint64_t)(limit / 2u) / (edges_per_step ? edges_per_step : 1u) * step_positions;
}

/* Positions per chunk for `chunks` chunks (the last one may be shorter). */
static inline uint32_t vk_decode_chunk_len(uint64_t n_ctx, uint32_t chunks) {
  return (uint32_t)((n_ctx + chunks - 1) / chunks);
}

#endif /* KQ_VK_SPLIT_H */
