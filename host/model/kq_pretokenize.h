/*
 * kq_pretokenize.h — GPT-2 pre-tokenization written out by hand: the split
 * the regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * makes, optionally after isolating every \p{N} character into its own
 * segment (the regex then runs on each segment separately, so a segment end
 * counts as end of text for the look-ahead).
 */
#ifndef KQ_PRETOKENIZE_H
#define KQ_PRETOKENIZE_H

#include <stddef.h>

#include "../common/kq_common.h"

/* Called once per piece, in order; pieces are non-empty and cover the text
 * exactly. A non-OK return stops the split and is passed on. */
typedef kq_status (*kq_piece_fn)(void *user, const char *piece, size_t len);

/* Splits text[0..len) (any bytes; invalid UTF-8 counts as punctuation). */
kq_status kq_pretokenize(const char *text, size_t len, int split_digits, kq_piece_fn fn,
                         void *user);

#endif /* KQ_PRETOKENIZE_H */
