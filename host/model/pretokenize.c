/* The GPT-2 pre-tokenizer regex as a hand-written scanner (see
 * kq_pretokenize.h for the pattern it reproduces). */
#include "kq_pretokenize.h"

#include <string.h>

#include "kq_unicode.h"

typedef enum cls { CLS_LETTER, CLS_NUMBER, CLS_SPACE, CLS_OTHER } cls;

static cls classify(uint32_t cp) {
  if (kq_unicode_is_letter(cp)) return CLS_LETTER;
  if (kq_unicode_is_number(cp)) return CLS_NUMBER;
  if (kq_unicode_is_space(cp)) return CLS_SPACE;
  return CLS_OTHER;
}

static size_t char_at(const char *s, size_t i, size_t end, uint32_t *cp) {
  return kq_utf8_decode((const unsigned char *)s + i, end - i, cp);
}

/* End of a run of characters of class c starting at i. */
static size_t run_end(const char *s, size_t i, size_t end, cls c) {
  while (i < end) {
    uint32_t cp;
    size_t n = char_at(s, i, end, &cp);
    if (classify(cp) != c) break;
    i += n;
  }
  return i;
}

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0. */
static size_t contraction(const char *s, size_t i, size_t end) {
  static const char *forms[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t k = 0; k < sizeof forms / sizeof forms[0]; k++) {
    size_t n = strlen(forms[k]);
    if (n <= end - i && !memcmp(s + i, forms[k], n)) return n;
  }
  return 0;
}

/* End of the regex match that starts at i (i < end). */
static size_t match(const char *s, size_t i, size_t end) {
  if (s[i] == '\'') {
    size_t n = contraction(s, i, end);
    if (n) return i + n;
  }
  uint32_t cp;
  size_t n = char_at(s, i, end, &cp);
  size_t j = i;
  uint32_t cj = cp;
  if (cp == ' ' && i + n < end) { /* optional leading space */
    j = i + n;
    char_at(s, j, end, &cj);
  }
  cls c = classify(cj);
  if (j < end && c != CLS_SPACE) return run_end(s, j, end, c);
  /* Whitespace: \s+(?!\S) leaves the last whitespace character to the
   * next token when a non-space follows; \s+ takes a single one. */
  size_t k = i, last = i;
  while (k < end) {
    uint32_t ck;
    size_t nk = char_at(s, k, end, &ck);
    if (!kq_unicode_is_space(ck)) break;
    last = k;
    k += nk;
  }
  if (k == end || last == i) return k;
  return last;
}

static kq_status split_segment(const char *s, size_t start, size_t end, kq_piece_fn fn,
                               void *user) {
  for (size_t i = start; i < end;) {
    size_t e = match(s, i, end);
    kq_status st = fn(user, s + i, e - i);
    if (st != KQ_OK) return st;
    i = e;
  }
  return KQ_OK;
}

kq_status kq_pretokenize(const char *text, size_t len, int split_digits, kq_piece_fn fn,
                         void *user) {
  if (!split_digits) return split_segment(text, 0, len, fn, user);
  size_t start = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t n = char_at(text, i, len, &cp);
    if (kq_unicode_is_number(cp)) {
      kq_status st = split_segment(text, start, i, fn, user);
      if (st == KQ_OK) st = fn(user, text + i, n);
      if (st != KQ_OK) return st;
      start = i + n;
    }
    i += n;
  }
  return split_segment(text, start, len, fn, user);
}
