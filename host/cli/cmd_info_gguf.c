/* `kqsvd info FILE.gguf`: the header, key/values and tensors of a GGUF file
 * (called from cmd_info.c when the file starts with the GGUF magic). */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_util.h"
#include "commands.h"
#include "model/kq_gguf.h"

static const char *vtype_text(kq_gguf_vtype t) {
  static const char *names[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                "int32",  "float32", "bool",   "string", "array",
                                "uint64", "int64",   "float64"};
  return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static const char *type_text(uint32_t type) {
  const char *n = kq_gguf_type_name(type);
  return n ? n : "?";
}

/* A scalar or string value as text (strings are cut at 60 bytes). */
static void value_text(const kq_gguf_kv *kv, char *buf, size_t cap) {
  switch (kv->type) {
  case KQ_GGUF_STRING: {
    int n = kv->str.len > 60 ? 60 : (int)kv->str.len;
    snprintf(buf, cap, "\"%.*s\"%s", n, kv->str.ptr, kv->str.len > 60 ? "..." : "");
    for (char *p = buf; *p; p++)
      if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    break;
  }
  case KQ_GGUF_ARRAY:
    snprintf(buf, cap, "[%llu x %s]", (unsigned long long)kv->n, vtype_text(kv->elem_type));
    break;
  case KQ_GGUF_FLOAT32:
  case KQ_GGUF_FLOAT64: snprintf(buf, cap, "%.9g", kv->f); break;
  case KQ_GGUF_BOOL: snprintf(buf, cap, "%s", kv->u ? "true" : "false"); break;
  case KQ_GGUF_INT8:
  case KQ_GGUF_INT16:
  case KQ_GGUF_INT32:
  case KQ_GGUF_INT64: snprintf(buf, cap, "%lld", (long long)kv->i); break;
  default: snprintf(buf, cap, "%llu", (unsigned long long)kv->u); break;
  }
}

static cJSON *value_json(const kq_gguf_kv *kv) {
  switch (kv->type) {
  case KQ_GGUF_STRING: {
    char buf[4096];
    size_t n = kv->str.len < sizeof buf - 1 ? (size_t)kv->str.len : sizeof buf - 1;
    memcpy(buf, kv->str.ptr, n);
    buf[n] = 0;
    return cJSON_CreateString(buf);
  }
  case KQ_GGUF_ARRAY: {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "array", vtype_text(kv->elem_type));
    cJSON_AddNumberToObject(o, "count", (double)kv->n);
    return o;
  }
  case KQ_GGUF_BOOL: return cJSON_CreateBool(kv->u != 0);
  case KQ_GGUF_FLOAT32:
  case KQ_GGUF_FLOAT64: return cJSON_CreateNumber(kv->f);
  case KQ_GGUF_INT8:
  case KQ_GGUF_INT16:
  case KQ_GGUF_INT32:
  case KQ_GGUF_INT64: return cJSON_CreateNumber((double)kv->i);
  default: return cJSON_CreateNumber((double)kv->u);
  }
}

static int print_json(const kq_gguf *g) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "format", "gguf");
  cJSON_AddNumberToObject(root, "version", kq_gguf_version(g));
  cJSON_AddNumberToObject(root, "alignment", (double)kq_gguf_alignment(g));
  cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
  for (int64_t j = 0; j < kq_gguf_kv_count(g); j++) {
    const kq_gguf_kv *kv = kq_gguf_kv_at(g, j);
    cJSON_AddItemToObject(meta, kv->key, value_json(kv));
  }
  cJSON *types = cJSON_AddObjectToObject(root, "tensor_types");
  cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
  for (int64_t j = 0; j < kq_gguf_tensor_count(g); j++) {
    const kq_gguf_tensor *t = kq_gguf_tensor_at(g, j);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "type", type_text(t->type));
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < t->n_dims; d++)
      cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->ne[d]));
    cJSON_AddNumberToObject(o, "bytes", (double)t->nbytes);
    cJSON_AddNumberToObject(o, "offset", (double)t->offset);
    cJSON_AddItemToArray(tensors, o);
    cJSON *c = cJSON_GetObjectItemCaseSensitive(types, type_text(t->type));
    if (c)
      cJSON_SetNumberValue(c, c->valuedouble + 1);
    else
      cJSON_AddNumberToObject(types, type_text(t->type), 1);
  }
  return kq_cli_json_print("info", root);
}

static void print_tables(const kq_gguf *g, const char *path) {
  printf("%s: GGUF v%u, alignment %llu, %lld key/values, %lld tensors\n\n", path,
         kq_gguf_version(g), (unsigned long long)kq_gguf_alignment(g),
         (long long)kq_gguf_kv_count(g), (long long)kq_gguf_tensor_count(g));
  printf("%-44s %-8s %s\n", "key", "type", "value");
  for (int64_t j = 0; j < kq_gguf_kv_count(g); j++) {
    const kq_gguf_kv *kv = kq_gguf_kv_at(g, j);
    char buf[128];
    value_text(kv, buf, sizeof buf);
    printf("%-44s %-8s %s\n", kv->key, vtype_text(kv->type), buf);
  }
  printf("\n%-32s %-6s %-24s %12s\n", "tensor", "type", "shape (ne0 first)", "bytes");
  uint32_t seen[64] = {0};
  int64_t count[64] = {0}, n_seen = 0;
  for (int64_t j = 0; j < kq_gguf_tensor_count(g); j++) {
    const kq_gguf_tensor *t = kq_gguf_tensor_at(g, j);
    char shape[96];
    size_t used = (size_t)snprintf(shape, sizeof shape, "[");
    for (int d = 0; d < t->n_dims && used < sizeof shape; d++)
      used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%llu", d ? ", " : "",
                               (unsigned long long)t->ne[d]);
    if (used < sizeof shape) snprintf(shape + used, sizeof shape - used, "]");
    printf("%-32s %-6s %-24s %12zu\n", t->name, type_text(t->type), shape, t->nbytes);
    int64_t k = 0;
    while (k < n_seen && seen[k] != t->type) k++;
    if (k == n_seen && n_seen < 64) seen[n_seen++] = t->type;
    if (k < 64) count[k]++;
  }
  printf("\ntensor types:");
  for (int64_t k = 0; k < n_seen; k++) printf(" %s x%lld", type_text(seen[k]), (long long)count[k]);
  printf("\n");
}

int kq_cli_info_gguf(const char *path, int json) {
  kq_gguf *g = NULL;
  kq_status st = kq_gguf_open(path, &g);
  if (st != KQ_OK) return kq_cli_fail("info", st);
  int rc = 0;
  if (json)
    rc = print_json(g);
  else
    print_tables(g, path);
  kq_gguf_close(g);
  if (fflush(stdout) != 0) rc = 1;
  return rc;
}
