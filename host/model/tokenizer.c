/* Byte-level BPE: vocab and merge tables from GGUF, GPT-2 byte alphabet,
 * heap-driven merging (O(n log n) per piece, so long runs of one character
 * cannot stall encoding). Pre-tokenization lives in pretokenize.c. */
#include <stdlib.h>
#include <string.h>

#include "kq_pretokenize.h"
#include "kq_tokenizer.h"
#include "kq_unicode.h"

enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4 };

typedef struct merge_slot {
  uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
  int32_t rank, merged;
} merge_slot;

struct kq_tokenizer {
  int32_t n_vocab;
  char *blob;         /* token strings, then token bytes */
  size_t *str_off;    /* [n_vocab + 1] offsets of token strings in blob */
  size_t *bytes_off;  /* [n_vocab + 1] offsets of decoded bytes in blob */
  int32_t *str_index; /* open-addressing hash of token strings: id or -1 */
  size_t str_cap;
  merge_slot *merges;
  size_t merge_cap;
  int32_t byte_token[256];
  int32_t *special; /* ids of control / user-defined tokens */
  int32_t n_special;
  int32_t bos, eos;
  int add_bos;
  int split_digits;
};

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t j = 0; j < n; j++) h = (h ^ (unsigned char)s[j]) * 1099511628211ull;
  return h;
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

static const char *tok_str(const kq_tokenizer *t, int32_t id, size_t *len) {
  *len = t->str_off[id + 1] - t->str_off[id];
  return t->blob + t->str_off[id];
}

static int32_t lookup(const kq_tokenizer *t, const char *s, size_t n) {
  for (size_t h = hash_bytes(s, n) & (t->str_cap - 1);; h = (h + 1) & (t->str_cap - 1)) {
    int32_t id = t->str_index[h];
    if (id < 0) return -1;
    size_t len;
    const char *ts = tok_str(t, id, &len);
    if (len == n && !memcmp(ts, s, n)) return id;
  }
}

static const merge_slot *find_merge(const kq_tokenizer *t, int32_t a, int32_t b) {
  uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  for (size_t h = hash_u64(key) & (t->merge_cap - 1);; h = (h + 1) & (t->merge_cap - 1)) {
    if (t->merges[h].key == 0) return NULL;
    if (t->merges[h].key == key) return &t->merges[h];
  }
}

/* GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the
 * other 68 bytes map to U+0100.. in byte order. */
static uint32_t byte_to_cp(int b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (uint32_t)b;
  uint32_t n = 0;
  for (int x = 0; x < b; x++)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
  return 256 + n;
}

static size_t put_utf8(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  out[0] = (char)(0xC0 | (cp >> 6));
  out[1] = (char)(0x80 | (cp & 0x3F));
  return 2; /* the alphabet stays below U+0800 */
}

static size_t next_pow2(size_t n) {
  size_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

static kq_status build_vocab(kq_tokenizer *t, const kq_gguf *f, const kq_gguf_kv *toks) {
  size_t total = 0;
  for (uint64_t j = 0; j < toks->n; j++) total += (size_t)toks->strs[j].len;
  /* Decoded bytes are never longer than the token string. */
  t->blob = kq_malloc_array(2 * total + 1, 1, "tokenizer strings");
  t->str_off = kq_malloc_array((size_t)t->n_vocab + 1, sizeof(size_t), "tokenizer offsets");
  t->bytes_off = kq_malloc_array((size_t)t->n_vocab + 1, sizeof(size_t), "tokenizer offsets");
  t->str_cap = next_pow2(2 * (size_t)t->n_vocab);
  t->str_index = kq_malloc_array(t->str_cap, sizeof(int32_t), "tokenizer index");
  if (!t->blob || !t->str_off || !t->bytes_off || !t->str_index) return KQ_ERR_OUT_OF_MEMORY;
  memset(t->str_index, 0xFF, t->str_cap * sizeof(int32_t));
  size_t pos = 0;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    t->str_off[id] = pos;
    memcpy(t->blob + pos, toks->strs[id].ptr, (size_t)toks->strs[id].len);
    pos += (size_t)toks->strs[id].len;
  }
  t->str_off[t->n_vocab] = pos;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    size_t len;
    const char *s = tok_str(t, id, &len);
    size_t h = hash_bytes(s, len) & (t->str_cap - 1);
    while (t->str_index[h] >= 0) {
      size_t ol;
      const char *os = tok_str(t, t->str_index[h], &ol);
      if (ol == len && !memcmp(os, s, len)) break; /* duplicate: first id wins */
      h = (h + 1) & (t->str_cap - 1);
    }
    if (t->str_index[h] < 0) t->str_index[h] = id;
  }
  /* Inverse alphabet for decoding. */
  int16_t cp_to_byte[324];
  for (int j = 0; j < 324; j++) cp_to_byte[j] = -1;
  for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp(b)] = (int16_t)b;
  const kq_gguf_kv *types = NULL;
  if (kq_gguf_find_kv(f, "tokenizer.ggml.token_type")) {
    kq_status st = kq_gguf_get_array(f, "tokenizer.ggml.token_type", KQ_GGUF_INT32, &types);
    if (st != KQ_OK) return st;
    if (types->n != (uint64_t)t->n_vocab)
      return kq_set_error(KQ_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries, vocab %d",
                          kq_gguf_path(f), (unsigned long long)types->n, t->n_vocab);
  }
  t->special = kq_malloc_array((size_t)t->n_vocab, sizeof(int32_t), "tokenizer specials");
  if (!t->special) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    int32_t type = TOKEN_NORMAL;
    if (types) memcpy(&type, (const char *)types->data + 4 * (size_t)id, 4);
    size_t len;
    const char *s = tok_str(t, id, &len);
    t->bytes_off[id] = pos;
    if ((type == TOKEN_CONTROL || type == TOKEN_USER_DEFINED) && len > 0) {
      t->special[t->n_special++] = id;
      memcpy(t->blob + pos, s, len);
      pos += len;
      continue;
    }
    for (size_t k = 0; k < len;) {
      uint32_t cp;
      size_t n = kq_utf8_decode((const unsigned char *)s + k, len - k, &cp);
      if (cp < 324 && cp_to_byte[cp] >= 0) {
        t->blob[pos++] = (char)cp_to_byte[cp];
      } else {
        memcpy(t->blob + pos, s + k, n); /* not in the alphabet: keep as is */
        pos += n;
      }
      k += n;
    }
  }
  t->bytes_off[t->n_vocab] = pos;
  for (int b = 0; b < 256; b++) {
    char buf[2];
    size_t n = put_utf8(byte_to_cp(b), buf);
    /* Some vocabs lack bytes that never occur in UTF-8 text (0xC0, 0xFF, ...);
     * such bytes are dropped when encoding, as the reference BPE does with no
     * unknown token. */
    t->byte_token[b] = lookup(t, buf, n);
  }
  return KQ_OK;
}

static kq_status build_merges(kq_tokenizer *t, const kq_gguf *f) {
  const kq_gguf_kv *m;
  kq_status st = kq_gguf_get_array(f, "tokenizer.ggml.merges", KQ_GGUF_STRING, &m);
  if (st != KQ_OK) return st;
  if (m->n > INT32_MAX) return kq_set_error(KQ_ERR_FORMAT, "%s: too many merges", kq_gguf_path(f));
  t->merge_cap = next_pow2(2 * (size_t)m->n);
  t->merges = kq_calloc_array(t->merge_cap, sizeof(merge_slot), "tokenizer merges");
  if (!t->merges) return KQ_ERR_OUT_OF_MEMORY;
  for (uint64_t r = 0; r < m->n; r++) {
    const char *s = m->strs[r].ptr;
    size_t len = (size_t)m->strs[r].len;
    const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
    if (!sp)
      return kq_set_error(KQ_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] is not 'A B'",
                          kq_gguf_path(f), (unsigned long long)r);
    size_t la = (size_t)(sp - s), lb = len - la - 1;
    int32_t a = lookup(t, s, la), b = lookup(t, sp + 1, lb);
    char buf[512];
    int32_t ab = -1;
    if (la + lb <= sizeof buf) {
      memcpy(buf, s, la);
      memcpy(buf + la, sp + 1, lb);
      ab = lookup(t, buf, la + lb);
    }
    if (a < 0 || b < 0 || ab < 0)
      return kq_set_error(KQ_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] names unknown tokens",
                          kq_gguf_path(f), (unsigned long long)r);
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t h = hash_u64(key) & (t->merge_cap - 1);
    while (t->merges[h].key != 0 && t->merges[h].key != key) h = (h + 1) & (t->merge_cap - 1);
    if (t->merges[h].key == 0) /* a repeated merge keeps its first (best) rank */
      t->merges[h] = (merge_slot){.key = key, .rank = (int32_t)r, .merged = ab};
  }
  return KQ_OK;
}

static kq_status optional_id(const kq_gguf *f, const char *key, int32_t n_vocab, int32_t *out) {
  *out = -1;
  if (!kq_gguf_find_kv(f, key)) return KQ_OK;
  uint32_t v;
  kq_status st = kq_gguf_get_u32(f, key, &v);
  if (st != KQ_OK) return st;
  if (v >= (uint32_t)n_vocab)
    return kq_set_error(KQ_ERR_FORMAT, "%s: %s = %u is outside the vocab (%d tokens)",
                        kq_gguf_path(f), key, v, n_vocab);
  *out = (int32_t)v;
  return KQ_OK;
}

static int str_is(kq_gguf_str s, const char *lit) {
  return s.len == strlen(lit) && !memcmp(s.ptr, lit, (size_t)s.len);
}

kq_status kq_tokenizer_load(const kq_gguf *f, kq_tokenizer **out_tok) {
  *out_tok = NULL;
  kq_gguf_str model;
  kq_status st = kq_gguf_get_str(f, "tokenizer.ggml.model", &model);
  if (st != KQ_OK) return st;
  if (!str_is(model, "gpt2"))
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "%s: tokenizer.ggml.model '%.*s' is not supported "
                        "(byte-level BPE 'gpt2' only)",
                        kq_gguf_path(f), (int)(model.len > 64 ? 64 : model.len), model.ptr);
  int split_digits = 0;
  if (kq_gguf_find_kv(f, "tokenizer.ggml.pre")) {
    kq_gguf_str pre;
    st = kq_gguf_get_str(f, "tokenizer.ggml.pre", &pre);
    if (st != KQ_OK) return st;
    if (str_is(pre, "smollm") || str_is(pre, "starcoder") || str_is(pre, "refact")) {
      split_digits = 1;
    } else if (!str_is(pre, "gpt2") && !str_is(pre, "default")) {
      return kq_set_error(KQ_ERR_UNSUPPORTED,
                          "%s: pre-tokenizer tokenizer.ggml.pre = '%.*s' is not supported "
                          "(gpt2, smollm, starcoder, refact)",
                          kq_gguf_path(f), (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
    }
  }
  const kq_gguf_kv *toks;
  st = kq_gguf_get_array(f, "tokenizer.ggml.tokens", KQ_GGUF_STRING, &toks);
  if (st != KQ_OK) return st;
  if (toks->n == 0 || toks->n > INT32_MAX)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries",
                        kq_gguf_path(f), (unsigned long long)toks->n);
  kq_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
  t->n_vocab = (int32_t)toks->n;
  t->split_digits = split_digits;
  st = build_vocab(t, f, toks);
  if (st == KQ_OK) st = build_merges(t, f);
  if (st == KQ_OK) st = optional_id(f, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
  if (st == KQ_OK) st = optional_id(f, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
  if (st == KQ_OK && kq_gguf_find_kv(f, "tokenizer.ggml.add_bos_token"))
    st = kq_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &t->add_bos);
  if (st != KQ_OK) {
    kq_tokenizer_destroy(t);
    return st;
  }
  *out_tok = t;
  return KQ_OK;
}

void kq_tokenizer_destroy(kq_tokenizer *t) {
  if (!t) return;
  free(t->blob);
  free(t->str_off);
  free(t->bytes_off);
  free(t->str_index);
  free(t->merges);
  free(t->special);
  free(t);
}

int32_t kq_tokenizer_vocab_size(const kq_tokenizer *t) {
  return t->n_vocab;
}
int32_t kq_tokenizer_bos(const kq_tokenizer *t) {
  return t->bos;
}
int32_t kq_tokenizer_eos(const kq_tokenizer *t) {
  return t->eos;
}
int kq_tokenizer_add_bos(const kq_tokenizer *t) {
  return t->add_bos;
}

const char *kq_tokenizer_token_bytes(const kq_tokenizer *t, int32_t id, size_t *out_len) {
  if (id < 0 || id >= t->n_vocab) return NULL;
  *out_len = t->bytes_off[id + 1] - t->bytes_off[id];
  return t->blob + t->bytes_off[id];
}

/* Growing output array. */
typedef struct id_vec {
  int32_t *ids;
  size_t n, cap;
} id_vec;

static kq_status push_id(id_vec *v, int32_t id) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 256;
    int32_t *p = realloc(v->ids, cap * sizeof *p);
    if (!p) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    v->ids = p;
    v->cap = cap;
  }
  v->ids[v->n++] = id;
  return KQ_OK;
}

typedef struct heap_item {
  int32_t rank, pos, left, right;
} heap_item;

static int heap_less(const heap_item *a, const heap_item *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(heap_item *h, size_t *n, heap_item x) {
  size_t i = (*n)++;
  while (i > 0 && heap_less(&x, &h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n) {
  heap_item top = h[0], x = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
    if (!heap_less(&h[c], &x)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = x;
  return top;
}

typedef struct bpe_work {
  int32_t *id, *prev, *next;
  heap_item *heap;
  size_t cap;
  size_t dropped; /* input bytes with no token in the vocab */
} bpe_work;

static void try_pair(const kq_tokenizer *t, bpe_work *w, size_t *hn, int32_t a) {
  if (a < 0 || w->next[a] < 0) return;
  const merge_slot *m = find_merge(t, w->id[a], w->id[w->next[a]]);
  if (m)
    heap_push(w->heap, hn,
              (heap_item){.rank = m->rank, .pos = a, .left = w->id[a], .right = w->id[w->next[a]]});
}

static kq_status bpe_piece(const kq_tokenizer *t, const unsigned char *s, size_t n, bpe_work *w,
                           id_vec *out) {
  if (n > w->cap) {
    size_t cap = n < 64 ? 64 : n;
    free(w->id);
    free(w->heap);
    w->id = kq_malloc_array(cap, 3 * sizeof(int32_t), "tokenizer work");
    w->heap = kq_malloc_array(cap, 3 * sizeof(heap_item), "tokenizer work");
    if (!w->id || !w->heap) {
      w->cap = 0;
      return KQ_ERR_OUT_OF_MEMORY;
    }
    w->prev = w->id + cap;
    w->next = w->id + 2 * cap;
    w->cap = cap;
  }
  size_t m = 0;
  for (size_t j = 0; j < n; j++) {
    if (t->byte_token[s[j]] >= 0)
      w->id[m++] = t->byte_token[s[j]];
    else
      w->dropped++;
  }
  if (m == 0) return KQ_OK;
  n = m;
  for (size_t j = 0; j < n; j++) {
    w->prev[j] = (int32_t)j - 1;
    w->next[j] = j + 1 < n ? (int32_t)j + 1 : -1;
  }
  size_t hn = 0;
  for (size_t j = 0; j + 1 < n; j++) try_pair(t, w, &hn, (int32_t)j);
  while (hn > 0) {
    heap_item it = heap_pop(w->heap, &hn);
    int32_t a = it.pos, b = w->next[a];
    if (w->id[a] != it.left || b < 0 || w->id[b] != it.right) continue; /* stale */
    w->id[a] = find_merge(t, it.left, it.right)->merged;
    w->id[b] = -1;
    w->next[a] = w->next[b];
    if (w->next[b] >= 0) w->prev[w->next[b]] = a;
    try_pair(t, w, &hn, w->prev[a]);
    try_pair(t, w, &hn, a);
  }
  for (int32_t j = 0; j >= 0; j = w->next[j]) {
    kq_status st = push_id(out, w->id[j]);
    if (st != KQ_OK) return st;
  }
  return KQ_OK;
}

typedef struct piece_ctx {
  const kq_tokenizer *t;
  bpe_work w;
  id_vec out;
  size_t max_tokens; /* 0: no limit */
  int full;          /* the limit was reached: stop the pre-tokenizer */
} piece_ctx;

static kq_status on_piece(void *user, const char *s, size_t n) {
  piece_ctx *c = user;
  if (c->max_tokens && c->out.n >= c->max_tokens) {
    c->full = 1;
    return KQ_ERR_INTERRUPTED; /* ends kq_pretokenize early; not an error */
  }
  return bpe_piece(c->t, (const unsigned char *)s, n, &c->w, &c->out);
}

/* Longest special token starting at s[0..len), or -1. */
static int32_t match_special(const kq_tokenizer *t, const char *s, size_t len, size_t *out_n) {
  int32_t best = -1;
  size_t best_n = 0;
  for (int32_t k = 0; k < t->n_special; k++) {
    size_t n;
    const char *ts = tok_str(t, t->special[k], &n);
    if (n > best_n && n <= len && !memcmp(ts, s, n)) best = t->special[k], best_n = n;
  }
  *out_n = best_n;
  return best;
}

kq_status kq_tokenizer_encode(const kq_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **out_ids, int32_t *out_n) {
  return kq_tokenizer_encode_ex(t, text, len, parse_special, 0, out_ids, out_n, NULL);
}

kq_status kq_tokenizer_encode_ex(const kq_tokenizer *t, const char *text, size_t len,
                                 int parse_special, int64_t max_tokens, int32_t **out_ids,
                                 int32_t *out_n, size_t *out_dropped) {
  *out_ids = NULL;
  *out_n = 0;
  if (out_dropped) *out_dropped = 0;
  piece_ctx c = {.t = t, .max_tokens = max_tokens > 0 ? (size_t)max_tokens : 0};
  kq_status st = KQ_OK;
  size_t start = 0;
  if (parse_special && t->n_special > 0) {
    for (size_t i = 0; i < len && st == KQ_OK && !c.full;) {
      size_t n;
      int32_t id = match_special(t, text + i, len - i, &n);
      if (id < 0) {
        i++;
        continue;
      }
      st = kq_pretokenize(text + start, i - start, t->split_digits, on_piece, &c);
      if (st == KQ_OK) st = push_id(&c.out, id);
      if (st == KQ_OK && c.max_tokens && c.out.n >= c.max_tokens) c.full = 1;
      i += n;
      start = i;
    }
  }
  if (st == KQ_OK && !c.full)
    st = kq_pretokenize(text + start, len - start, t->split_digits, on_piece, &c);
  if (c.full) { /* stopped at the limit on purpose */
    kq_clear_error();
    st = KQ_OK;
  }
  /* The last piece may overshoot the limit without a next one to stop at. */
  if (st == KQ_OK && c.max_tokens && c.out.n > c.max_tokens) c.out.n = c.max_tokens;
  if (st == KQ_OK && c.out.n > INT32_MAX)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "tokenizer: text gives more than 2^31 tokens");
  if (st == KQ_OK && !c.out.ids) { /* an empty text still returns an array */
    st = push_id(&c.out, 0);
    c.out.n = 0;
  }
  free(c.w.id);
  free(c.w.heap);
  if (st != KQ_OK) {
    free(c.out.ids);
    return st;
  }
  *out_ids = c.out.ids;
  *out_n = (int32_t)c.out.n;
  if (out_dropped) *out_dropped = c.w.dropped;
  return KQ_OK;
}
