/*
 * kq_tokenizer.h — byte-level BPE tokenizer built from a GGUF file's vocab
 * (tokenizer.ggml.model = "gpt2": tokens, merges, token types, bos/eos).
 *
 * Encoding: text is split into pieces by the pre-tokenizer the file names in
 * tokenizer.ggml.pre ("gpt2"; "smollm"/"starcoder"/"refact" additionally
 * isolate every \p{N} character first), each piece's UTF-8 bytes are mapped
 * to the GPT-2 byte alphabet and merged by merge rank (lowest first, leftmost
 * on ties). Special tokens (control / user-defined) are recognised in the
 * text only when asked. No BOS is added here: see kq_tokenizer_add_bos.
 */
#ifndef KQ_TOKENIZER_H
#define KQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "kq_gguf.h"

typedef struct kq_tokenizer kq_tokenizer;

/* Builds the tokenizer from `file` (which may be closed afterwards: all
 * strings are copied). Errors: KQ_ERR_NOT_FOUND / KQ_ERR_FORMAT naming the
 * key (missing vocab, a merge naming unknown tokens, ids out of range),
 * KQ_ERR_UNSUPPORTED for another tokenizer model or pre-tokenizer. */
kq_status kq_tokenizer_load(const kq_gguf *file, kq_tokenizer **out_tok);
void kq_tokenizer_destroy(kq_tokenizer *tok);

int32_t kq_tokenizer_vocab_size(const kq_tokenizer *tok);
int32_t kq_tokenizer_bos(const kq_tokenizer *tok); /* -1 if the file has none */
int32_t kq_tokenizer_eos(const kq_tokenizer *tok); /* -1 if the file has none */
/* tokenizer.ggml.add_bos_token (0 when absent). */
int kq_tokenizer_add_bos(const kq_tokenizer *tok);

/* Encodes text[0..len) (any bytes; invalid UTF-8 is encoded byte by byte)
 * into a new array *out_ids of *out_n ids (caller frees; an empty text gives
 * *out_n = 0 and a valid pointer). parse_special != 0: control and
 * user-defined token strings in the text map to their ids. */
kq_status kq_tokenizer_encode(const kq_tokenizer *tok, const char *text, size_t len,
                              int parse_special, int32_t **out_ids, int32_t *out_n);

/* kq_tokenizer_encode with a limit and a report: stops once max_tokens ids
 * are produced (0: no limit; the text after that point is not even
 * pre-tokenized, so a huge file with a small limit stays cheap), and sets
 * *out_dropped (may be NULL) to the number of input bytes that have no token
 * in this vocabulary and were left out (SmolLM2 has none for 0x04, 0x06,
 * ...; the caller should warn: the encoded text differs from the input). */
kq_status kq_tokenizer_encode_ex(const kq_tokenizer *tok, const char *text, size_t len,
                                 int parse_special, int64_t max_tokens, int32_t **out_ids,
                                 int32_t *out_n, size_t *out_dropped);

/* The bytes a token stands for (valid while tok lives; not NUL-terminated).
 * Control tokens give their literal text. NULL for an id out of range. */
const char *kq_tokenizer_token_bytes(const kq_tokenizer *tok, int32_t id, size_t *out_len);

#endif /* KQ_TOKENIZER_H */
