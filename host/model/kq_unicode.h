/*
 * kq_unicode.h — the little Unicode the tokenizer needs: UTF-8 decoding and
 * the classes \p{L} (letters), \p{N} (numbers) and \s (White_Space).
 */
#ifndef KQ_UNICODE_H
#define KQ_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Sorted, disjoint inclusive ranges [first, last] (unicode_tables.c). */
extern const uint32_t kq_unicode_letters[][2];
extern const size_t kq_unicode_letters_count;
extern const uint32_t kq_unicode_numbers[][2];
extern const size_t kq_unicode_numbers_count;

/* Decodes one UTF-8 character from s[0..len) (len >= 1) into *cp and returns
 * its byte length (1..4). A malformed or truncated sequence decodes as one
 * byte with *cp = 0xFFFFFFFF, which belongs to no class. */
size_t kq_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);

int kq_unicode_is_letter(uint32_t cp);
int kq_unicode_is_number(uint32_t cp);
/* The Unicode White_Space property (what \s matches in Unicode regexes). */
int kq_unicode_is_space(uint32_t cp);

#endif /* KQ_UNICODE_H */
