/* Pre-tokenization: the hand-written scanner splits text exactly as the
 * GPT-2 regex 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
 * \s+(?!\S)|\s+ does (expected pieces worked out by hand from the pattern),
 * with and without isolating digits first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "model/kq_pretokenize.h"
#include "model/kq_unicode.h"

typedef struct pieces {
  char text[32][64];
  int n;
} pieces;

static kq_status collect(void *user, const char *s, size_t n) {
  pieces *p = user;
  assert_true(p->n < 32 && n < 64 && n > 0);
  memcpy(p->text[p->n], s, n);
  p->text[p->n][n] = 0;
  p->n++;
  return KQ_OK;
}

/* Splits `text` and compares with the NULL-terminated list `want`. */
static void expect_split(const char *text, int split_digits, const char *const *want) {
  pieces p = {.n = 0};
  assert_int_equal(kq_pretokenize(text, strlen(text), split_digits, collect, &p), KQ_OK);
  int n = 0;
  while (want[n]) n++;
  for (int j = 0; j < n && j < p.n; j++)
    if (strcmp(p.text[j], want[j]))
      fail_msg("'%s': piece %d is '%s', expected '%s'", text, j, p.text[j], want[j]);
  if (p.n != n) fail_msg("'%s': %d pieces, expected %d", text, p.n, n);
}

#define SPLIT(text, digits, ...)                                                                   \
  do {                                                                                             \
    const char *const want_[] = {__VA_ARGS__, NULL};                                               \
    expect_split(text, digits, want_);                                                             \
  } while (0)

static void words_keep_their_leading_space(void **state) {
  (void)state;
  SPLIT("Hello world", 0, "Hello", " world");
  SPLIT("café naïve", 0, "café", " naïve");
  SPLIT("東京 日本語", 0, "東京", " 日本語");
}

static void whitespace_runs_leave_one_space_to_the_next_word(void **state) {
  (void)state;
  SPLIT("a  b", 0, "a", " ", " b");
  SPLIT("a    b", 0, "a", "   ", " b");
  SPLIT("a \n b", 0, "a", " \n", " b");
  SPLIT("a\n\nb", 0, "a", "\n", "\n", "b");
  SPLIT("end   ", 0, "end", "   ");
  SPLIT("\tx", 0, "\t", "x");
}

static void contractions_split_off(void **state) {
  (void)state;
  SPLIT("don't", 0, "don", "'t");
  SPLIT("we'll they're I'm", 0, "we", "'ll", " they", "'re", " I", "'m");
  SPLIT(" 'quoted'", 0, " '", "quoted", "'");
}

static void digits_group_or_isolate(void **state) {
  (void)state;
  SPLIT("x 123", 0, "x", " 123");
  SPLIT("x 123", 1, "x", " ", "1", "2", "3");
  SPLIT("3.14", 1, "3", ".", "1", "4");
  SPLIT("٣٤ab", 1, "٣", "٤", "ab"); /* Arabic-Indic digits are \p{N} */
  SPLIT("a1b", 1, "a", "1", "b");
}

static void punctuation_and_symbols_run_together(void **state) {
  (void)state;
  SPLIT("Hi!!! ok?", 0, "Hi", "!!!", " ok", "?");
  SPLIT("a->b[i]++;", 0, "a", "->", "b", "[", "i", "]++;");
  SPLIT("😀👍 yes", 0, "😀👍", " yes");
}

static void empty_and_invalid_utf8_inputs(void **state) {
  (void)state;
  pieces p = {.n = 0};
  assert_int_equal(kq_pretokenize("", 0, 1, collect, &p), KQ_OK);
  assert_int_equal(p.n, 0);
  SPLIT("a\xff\xfe b", 0, "a", "\xff\xfe", " b");
  uint32_t cp;
  assert_int_equal(kq_utf8_decode((const unsigned char *)"\xc0\xaf", 2, &cp), 1); /* overlong */
  assert_int_equal(cp, 0xFFFFFFFFu);
  assert_int_equal(kq_utf8_decode((const unsigned char *)"\xe6\x9d\xb1", 3, &cp), 3);
  assert_int_equal(cp, 0x6771);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(words_keep_their_leading_space),
      cmocka_unit_test(whitespace_runs_leave_one_space_to_the_next_word),
      cmocka_unit_test(contractions_split_off),
      cmocka_unit_test(digits_group_or_isolate),
      cmocka_unit_test(punctuation_and_symbols_run_together),
      cmocka_unit_test(empty_and_invalid_utf8_inputs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
