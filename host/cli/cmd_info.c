/*
 * cmd_info.c — `kqsvd info FILE [--json]`: the tensors (name, dtype, shape,
 * bytes) and metadata of a safetensors file, plus per-layer ranks when the
 * file is a kqsvd projection file. GGUF files are listed by the model
 * module when it is built in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_util.h"
#include "commands.h"
#include "io/kq_projections_internal.h"
#include "io/kq_safetensors.h"
#include "kqsvd.h"

static void usage(FILE *out) {
  fprintf(out, "usage: kqsvd info FILE [--json]\n\n"
               "Lists the tensors (name, dtype, shape, bytes) and the metadata of a\n"
               "safetensors file. For a kqsvd projection file (metadata format =\n"
               "kqsvd-projections) it also validates the file and prints the ranks of\n"
               "every layer. The file is checked completely: a malformed file is an\n"
               "error naming the file and the tensor.\n\n"
               "options:\n"
               "  --json        print one JSON object instead of tables\n"
               "  -q, --quiet   accepted for symmetry (info prints only results)\n"
               "  -v, --verbose accepted for symmetry\n"
               "  -h, --help    this text\n\n"
               "exit status: 0 success, 1 unreadable or malformed file, 2 usage error\n");
}

static void shape_text(const kq_st_tensor *t, char *buf, size_t cap) {
  size_t used = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < t->n_dims && used < cap; i++)
    used +=
        (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* Prints `s` with control characters escaped so a value cannot break the table. */
static void print_escaped(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '\n')
      fputs("\\n", stdout);
    else if (*p == '\t')
      fputs("\\t", stdout);
    else if (*p < 0x20 || *p == 0x7f)
      printf("\\x%02x", *p);
    else
      putchar(*p);
  }
}

static int is_projection_file(const kq_st_file *f) {
  const char *fmt = kq_st_meta(f, "format");
  return fmt && strcmp(fmt, "kqsvd-projections") == 0;
}

static void print_tables(const kq_st_file *f, const kq_projections *proj) {
  int n = kq_st_count(f);
  size_t w_name = 4, w_dtype = 5, w_shape = 5;
  unsigned long long total = 0;
  char shape[256];
  for (int i = 0; i < n; i++) {
    const kq_st_tensor *t = kq_st_at(f, i);
    shape_text(t, shape, sizeof shape);
    if (strlen(t->name) > w_name) w_name = strlen(t->name);
    if (strlen(shape) > w_shape) w_shape = strlen(shape);
    total += t->nbytes;
  }
  printf("%s: %d tensor%s, %llu data bytes\n\n", kq_st_path(f), n, n == 1 ? "" : "s", total);
  if (n > 0) {
    printf("%-*s  %-*s  %-*s  %15s\n", (int)w_name, "name", (int)w_dtype, "dtype", (int)w_shape,
           "shape", "bytes");
    for (int i = 0; i < n; i++) {
      const kq_st_tensor *t = kq_st_at(f, i);
      shape_text(t, shape, sizeof shape);
      printf("%-*s  %-*s  %-*s  %15llu\n", (int)w_name, t->name, (int)w_dtype,
             kq_dtype_name(t->dtype), (int)w_shape, shape, (unsigned long long)t->nbytes);
    }
  }
  int m = kq_st_meta_count(f);
  if (m > 0) {
    size_t w_key = 3;
    for (int i = 0; i < m; i++) {
      const char *k, *v;
      kq_st_meta_at(f, i, &k, &v);
      if (strlen(k) > w_key) w_key = strlen(k);
    }
    printf("\nmetadata:\n");
    for (int i = 0; i < m; i++) {
      const char *k, *v;
      kq_st_meta_at(f, i, &k, &v);
      printf("  %-*s  ", (int)w_key, k);
      print_escaped(v);
      putchar('\n');
    }
  }
  if (!proj) return;
  kq_projections_info info;
  kq_projections_get_info(proj, &info);
  printf("\nprojections: method %s, %d layers, %d heads, %d kv heads, head_dim %d\n",
         kq_method_name(info.method), info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim);
  printf("%5s  %6s  %6s  %13s\n", "layer", "rank_k", "rank_v", "cache_ratio");
  long long sum = 0;
  for (int32_t l = 0; l < info.n_layers; l++) {
    kq_projection_layer v;
    kq_projections_layer_view(proj, l, &v);
    sum += v.rank_k + v.rank_v;
    printf("%5d  %6d  %6d  %13.4f\n", l, v.rank_k, v.rank_v,
           (double)(v.rank_k + v.rank_v) / (2.0 * info.head_dim));
  }
  printf("%5s  %6s  %6s  %13.4f\n", "all", "", "",
         (double)sum / (2.0 * info.head_dim * info.n_layers));
}

static int print_json(const kq_st_file *f, const kq_projections *proj) {
  cJSON *root = cJSON_CreateObject();
  int ok = root != NULL;
  ok = ok && cJSON_AddStringToObject(root, "file", kq_st_path(f));
  cJSON *tensors = ok ? cJSON_AddArrayToObject(root, "tensors") : NULL;
  ok = ok && tensors;
  for (int i = 0; ok && i < kq_st_count(f); i++) {
    const kq_st_tensor *t = kq_st_at(f, i);
    cJSON *o = cJSON_CreateObject();
    ok = o && cJSON_AddItemToArray(tensors, o);
    ok = ok && cJSON_AddStringToObject(o, "name", t->name);
    ok = ok && cJSON_AddStringToObject(o, "dtype", kq_dtype_name(t->dtype));
    cJSON *shape = ok ? cJSON_AddArrayToObject(o, "shape") : NULL;
    ok = ok && shape;
    for (int k = 0; ok && k < t->n_dims; k++)
      ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[k]));
    ok = ok && cJSON_AddNumberToObject(o, "bytes", (double)t->nbytes);
  }
  cJSON *meta = ok ? cJSON_AddObjectToObject(root, "metadata") : NULL;
  ok = ok && meta;
  for (int i = 0; ok && i < kq_st_meta_count(f); i++) {
    const char *k, *v;
    kq_st_meta_at(f, i, &k, &v);
    ok = cJSON_AddStringToObject(meta, k, v) != NULL;
  }
  if (ok && proj) {
    kq_projections_info info;
    kq_projections_get_info(proj, &info);
    cJSON *p = cJSON_AddObjectToObject(root, "projections");
    ok = p && cJSON_AddStringToObject(p, "method", kq_method_name(info.method));
    ok = ok && cJSON_AddNumberToObject(p, "n_layers", info.n_layers);
    ok = ok && cJSON_AddNumberToObject(p, "n_heads", info.n_heads);
    ok = ok && cJSON_AddNumberToObject(p, "n_kv_heads", info.n_kv_heads);
    ok = ok && cJSON_AddNumberToObject(p, "head_dim", info.head_dim);
    cJSON *layers = ok ? cJSON_AddArrayToObject(p, "layers") : NULL;
    ok = ok && layers;
    for (int32_t l = 0; ok && l < info.n_layers; l++) {
      kq_projection_layer v;
      kq_projections_layer_view(proj, l, &v);
      cJSON *o = cJSON_CreateObject();
      ok = o && cJSON_AddItemToArray(layers, o);
      ok = ok && cJSON_AddNumberToObject(o, "layer", l);
      ok = ok && cJSON_AddNumberToObject(o, "rank_k", v.rank_k);
      ok = ok && cJSON_AddNumberToObject(o, "rank_v", v.rank_v);
    }
  }
  char *text = ok ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  if (!text) {
    fprintf(stderr, "kqsvd info: %s: out of memory while building JSON\n", kq_st_path(f));
    return 1;
  }
  puts(text);
  cJSON_free(text);
  return 0;
}

static int starts_with_gguf(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return 0; /* the safetensors reader reports why */
  char magic[4];
  int is = fread(magic, 1, 4, fp) == 4 && memcmp(magic, "GGUF", 4) == 0;
  fclose(fp);
  return is;
}

int kq_cmd_info(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  static const struct option options[] = {
      {"json", no_argument, NULL, 'j'}, KQ_CLI_COMMON_LONG, {NULL, 0, NULL, 0}};
  int c;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt("info", argc, argv, KQ_CLI_COMMON_SHORT, options)) != -1) {
    if (c == 'h') {
      usage(stdout);
      return 0;
    }
    if (c != 'j') return 2;
    json = 1;
  }
  for (int i = optind; i < argc; i++) {
    if (path)
      return kq_cli_usage_error("info", "one FILE expected, got '%s' and '%s'", path, argv[i]);
    path = argv[i];
  }
  if (!path) return kq_cli_usage_error("info", "missing FILE");

  int is_gguf = starts_with_gguf(path);
  if (is_gguf) return kq_cli_info_gguf(path, json);

  kq_st_file *f = NULL;
  kq_status st = kq_st_open(path, &f);
  if (st != KQ_OK) return kq_cli_fail("info", st);
  kq_projections *proj = NULL;
  if (is_projection_file(f)) {
    st = kq_projections_load(path, &proj);
    if (st != KQ_OK) {
      kq_st_close(f);
      return kq_cli_fail("info", st);
    }
  }
  int rc = 0;
  if (json)
    rc = print_json(f, proj);
  else
    print_tables(f, proj);
  kq_projections_destroy(proj);
  kq_st_close(f);
  if (fflush(stdout) != 0) rc = 1;
  return rc;
}
