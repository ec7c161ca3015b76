/*
 * fuzz_tokenizer.c — libFuzzer harness for the byte-level BPE tokenizer
 * (pre-tokenizer, merges, special tokens). The tokenizer is loaded once from
 * the tiny model committed as a seed (KQ_FUZZ_TOKENIZER_GGUF, set by CMake;
 * its vocab has all 256 byte tokens). Input: byte 0 is a token limit (0: none),
 * the rest is the text. For parse_special 0 and 1, aborts (the finding) when
 *   - encoding fails, or gives an id outside the vocab;
 *   - no byte was dropped and the ids' bytes, concatenated, differ from the
 *     text. The header promises any bytes are encoded ("invalid UTF-8 byte by
 *     byte"), so this is checked for every input, valid UTF-8 or not;
 *   - with the limit, the ids are not the first min(limit, n) ids of the
 *     unlimited encoding ("stops once max_tokens ids are produced").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kq_gguf.h"
#include "model/kq_tokenizer.h"

#ifndef KQ_FUZZ_TOKENIZER_GGUF
#error "KQ_FUZZ_TOKENIZER_GGUF must name the GGUF file the tokenizer is loaded from"
#endif

static kq_tokenizer *g_tok;

static void die(const char *what) {
  fprintf(stderr, "fuzz_tokenizer: %s\n", what);
  abort();
}

static int32_t *encode(const uint8_t *text, size_t len, int special, int64_t limit, int32_t *n,
                       size_t *dropped) {
  int32_t *ids = NULL;
  if (kq_tokenizer_encode_ex(g_tok, (const char *)text, len, special, limit, &ids, n, dropped) !=
          KQ_OK ||
      !ids || *n < 0)
    die(kq_last_error());
  return ids;
}

/* The ids' bytes, concatenated, must be text[0, len). */
static void check_round_trip(const int32_t *ids, int32_t n, const uint8_t *text, size_t len) {
  size_t at = 0;
  for (int32_t j = 0; j < n; j++) {
    size_t tl = 0;
    const char *tb = kq_tokenizer_token_bytes(g_tok, ids[j], &tl);
    if (!tb) die("an id outside the vocab");
    if (tl > len - at || memcmp(tb, text + at, tl) != 0) die("decoded bytes differ from the text");
    at += tl;
  }
  if (at != len) die("decoded text is shorter than the input");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  kq_gguf *f = NULL;
  if (kq_gguf_open(KQ_FUZZ_TOKENIZER_GGUF, &f) != KQ_OK || kq_tokenizer_load(f, &g_tok) != KQ_OK)
    die(kq_last_error());
  kq_gguf_close(f);
  /* The round-trip check is only as strong as the vocab: every byte must
   * have a token, or inputs would be skipped as "dropped". */
  for (int b = 0; b < 256; b++) {
    uint8_t byte = (uint8_t)b;
    int32_t n;
    size_t dropped;
    int32_t *ids = encode(&byte, 1, 0, 0, &n, &dropped);
    if (dropped != 0 || n != 1) die("the seed vocab lacks a byte token");
    check_round_trip(ids, n, &byte, 1);
    free(ids);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  int64_t limit = data[0];
  const uint8_t *text = data + 1;
  size_t len = size - 1;
  for (int special = 0; special <= 1; special++) {
    int32_t n = 0, n_lim = 0;
    size_t dropped = 0, dropped_lim = 0;
    int32_t *ids = encode(text, len, special, 0, &n, &dropped);
    for (int32_t j = 0; j < n; j++)
      if (ids[j] < 0 || ids[j] >= kq_tokenizer_vocab_size(g_tok)) die("an id outside the vocab");
    if (dropped == 0) check_round_trip(ids, n, text, len);
    int32_t *lim = encode(text, len, special, limit, &n_lim, &dropped_lim);
    int32_t want = limit > 0 && limit < n ? (int32_t)limit : n;
    if (n_lim != want) die("the limited encoding has the wrong number of ids");
    if (memcmp(lim, ids, (size_t)n_lim * sizeof *ids) != 0)
      die("the limited encoding is not a prefix of the unlimited one");
    free(lim);
    free(ids);
  }
  return 0;
}
