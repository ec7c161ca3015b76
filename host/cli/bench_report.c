/*
 * bench_report.c — the result list of `kqsvd bench`, speedups against the
 * full-attention baseline, the machine description and the JSON / text
 * output.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "cli_util.h"

bool kq_bench_report_add(kq_bench_report *rep, const kq_bench_result *r) {
  if (rep->count == rep->capacity) {
    int cap = rep->capacity ? 2 * rep->capacity : 64;
    kq_bench_result *p = realloc(rep->items, (size_t)cap * sizeof *p);
    if (!p) return false;
    rep->items = p, rep->capacity = cap;
  }
  rep->items[rep->count++] = *r;
  return true;
}

bool kq_bench_report_note(kq_bench_report *rep, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kqsvd bench: note: %s\n", buf);
  if (rep->n_notes == rep->notes_capacity) {
    int cap = rep->notes_capacity ? 2 * rep->notes_capacity : 16;
    char **p = realloc(rep->notes, (size_t)cap * sizeof *p);
    if (!p) return false;
    rep->notes = p, rep->notes_capacity = cap;
  }
  char *copy = strdup(buf);
  if (!copy) return false;
  rep->notes[rep->n_notes++] = copy;
  return true;
}

void kq_bench_report_device(kq_bench_report *rep, const kq_device_info *info, double ceiling_gbps,
                            uint64_t target_bytes) {
  if (rep->n_devices >= (int)(sizeof rep->devices / sizeof rep->devices[0])) return;
  struct kq_bench_device_entry *e = &rep->devices[rep->n_devices];
  memset(e, 0, sizeof *e);
  e->info = *info;
  e->ceiling_gbps = ceiling_gbps;
  e->target_bytes = target_bytes;
  rep->n_devices++;
  kq_bench_report_ceiling_sample(rep, info->name, ceiling_gbps);
}

static struct kq_bench_device_entry *find_device(const kq_bench_report *rep, const char *device) {
  for (int i = 0; i < rep->n_devices; i++)
    if (strcmp(rep->devices[i].info.name, device) == 0)
      return (struct kq_bench_device_entry *)&rep->devices[i];
  return NULL;
}

bool kq_bench_report_ceiling_sample(kq_bench_report *rep, const char *device, double gbps) {
  struct kq_bench_device_entry *e = find_device(rep, device);
  if (!e) return false;
  if (e->n_ceiling_samples == e->ceiling_samples_capacity) {
    int cap = e->ceiling_samples_capacity ? 2 * e->ceiling_samples_capacity : 64;
    double *p = realloc(e->ceiling_samples, (size_t)cap * sizeof *p);
    if (!p) return false;
    e->ceiling_samples = p, e->ceiling_samples_capacity = cap;
  }
  e->ceiling_samples[e->n_ceiling_samples++] = gbps;
  e->ceiling_gbps = kq_median(e->ceiling_samples, e->n_ceiling_samples); /* sorts: fine */
  return true;
}

void kq_bench_report_ceilings(kq_bench_report *rep) {
  for (int i = 0; i < rep->count; i++) {
    kq_bench_result *r = &rep->items[i];
    const struct kq_bench_device_entry *e = find_device(rep, r->device);
    if (!e || !isfinite(r->ceiling_gbps)) continue;
    r->ceiling_gbps = e->ceiling_gbps;
    r->pct_of_ceiling = 100.0 * r->gbps / e->ceiling_gbps;
  }
}

void kq_bench_report_free(kq_bench_report *rep) {
  for (int i = 0; i < rep->n_notes; i++) free(rep->notes[i]);
  for (int i = 0; i < rep->n_devices; i++) free(rep->devices[i].ceiling_samples);
  free(rep->notes);
  free(rep->items);
  memset(rep, 0, sizeof *rep);
}

static bool is_attention(const kq_bench_result *r) {
  return strcmp(r->op, "decode") == 0 || strcmp(r->op, "prefill") == 0 ||
         strcmp(r->op, "overhead") == 0;
}

static bool same_case(const kq_bench_result *a, const kq_bench_result *b) {
  return strcmp(a->device, b->device) == 0 && strcmp(a->op, b->op) == 0 &&
         a->context == b->context && a->heads == b->heads && a->kv_heads == b->kv_heads &&
         a->head_dim == b->head_dim && a->storage == b->storage && a->rope == b->rope;
}

void kq_bench_report_speedups(kq_bench_report *rep) {
  for (int i = 0; i < rep->count; i++) {
    kq_bench_result *r = &rep->items[i];
    if (!is_attention(r)) continue;
    r->speedup_vs_full = NAN;
    for (int j = 0; j < rep->count; j++) {
      const kq_bench_result *f = &rep->items[j];
      if (same_case(r, f) && f->rank_k == f->head_dim && f->rank_v == f->head_dim &&
          !isfinite(f->bytes_budget))
        r->speedup_vs_full = f->seconds / r->seconds;
    }
  }
}

uint64_t kq_bench_llc_bytes(void) {
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  if (f) {
    unsigned long long v = 0;
    char unit = 0;
    int n = fscanf(f, "%llu%c", &v, &unit);
    fclose(f);
    if (n >= 1 && v > 0) {
      if (unit == 'K')
        v <<= 10;
      else if (unit == 'M')
        v <<= 20;
      return v;
    }
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (s > 0) return (uint64_t)s;
#endif
  return (uint64_t)32 << 20;
}

/* "model name" of /proc/cpuinfo, or "unknown CPU". */
static void cpu_model(char *buf, size_t size) {
  snprintf(buf, size, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    char *colon = strchr(line, ':');
    if (!colon) continue;
    colon++;
    while (*colon == ' ' || *colon == '\t') colon++;
    colon[strcspn(colon, "\n")] = '\0';
    snprintf(buf, size, "%s", colon);
    break;
  }
  fclose(f);
}

static void add_int_or_null(cJSON *o, const char *key, int32_t v) {
  if (v >= 0)
    cJSON_AddNumberToObject(o, key, v);
  else
    cJSON_AddNullToObject(o, key);
}

static void add_string_or_null(cJSON *o, const char *key, const char *v) {
  if (v)
    cJSON_AddStringToObject(o, key, v);
  else
    cJSON_AddNullToObject(o, key);
}

static cJSON *machine_json(const kq_bench_report *rep) {
  cJSON *m = cJSON_CreateObject();
  char model[256];
  cpu_model(model, sizeof model);
  cJSON_AddStringToObject(m, "cpu", model);
  cJSON_AddNumberToObject(m, "cores", (double)sysconf(_SC_NPROCESSORS_ONLN));
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  cJSON_AddNumberToObject(m, "memory_bytes", pages > 0 && page > 0 ? (double)pages * page : 0.0);
  cJSON_AddNumberToObject(m, "llc_bytes", (double)kq_bench_llc_bytes());
  double load[3] = {0, 0, 0};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = NAN;
    fclose(f);
  }
  kq_cli_json_add_number(m, "load_average_1min", load[0]);
  cJSON *devs = cJSON_AddArrayToObject(m, "devices");
  for (int i = 0; i < rep->n_devices; i++) {
    const kq_device_info *d = &rep->devices[i].info;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "description", d->description);
    cJSON_AddStringToObject(o, "driver", d->driver);
    cJSON_AddNumberToObject(o, "memory_bytes", (double)d->memory_bytes);
    kq_cli_json_add_number(o, "ceiling_gbps", rep->devices[i].ceiling_gbps);
    cJSON_AddNumberToObject(o, "step_bytes", (double)rep->devices[i].target_bytes);
    cJSON_AddItemToArray(devs, o);
  }
  cJSON *notes = cJSON_AddArrayToObject(m, "notes");
  for (int i = 0; i < rep->n_notes; i++)
    cJSON_AddItemToArray(notes, cJSON_CreateString(rep->notes[i]));
  return m;
}

bool kq_bench_report_json(const kq_bench_report *rep, FILE *out) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return false;
  cJSON_AddItemToObject(root, "machine", machine_json(rep));
  cJSON *arr = cJSON_AddArrayToObject(root, "results");
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *r = &rep->items[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "device", r->device);
    cJSON_AddStringToObject(o, "op", r->op);
    add_int_or_null(o, "context", r->context);
    add_int_or_null(o, "heads", r->heads);
    add_int_or_null(o, "kv_heads", r->kv_heads);
    add_int_or_null(o, "head_dim", r->head_dim);
    add_int_or_null(o, "rank_k", r->rank_k);
    add_int_or_null(o, "rank_v", r->rank_v);
    add_string_or_null(o, "storage", r->storage);
    add_string_or_null(o, "rope", r->rope);
    kq_cli_json_add_number(o, "seconds", r->seconds);
    kq_cli_json_add_number(o, "tokens_per_s", r->tokens_per_s);
    kq_cli_json_add_number(o, "bytes", r->bytes);
    kq_cli_json_add_number(o, "gbps", r->gbps);
    kq_cli_json_add_number(o, "ceiling_gbps", r->ceiling_gbps);
    kq_cli_json_add_number(o, "pct_of_ceiling", r->pct_of_ceiling);
    kq_cli_json_add_number(o, "speedup_vs_full", r->speedup_vs_full);
    kq_cli_json_add_number(o, "bytes_fraction", r->bytes_fraction);
    kq_cli_json_add_number(o, "bytes_budget", r->bytes_budget);
    add_string_or_null(o, "layout", r->layout);
    cJSON_AddItemToArray(arr, o);
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) return false;
  bool ok = fprintf(out, "%s\n", text) > 0;
  cJSON_free(text);
  return ok;
}

void kq_bench_report_text(const kq_bench_report *rep, FILE *out) {
  char model[256];
  cpu_model(model, sizeof model);
  fprintf(out, "machine: %s, %ld cores, LLC %.0f MiB\n", model, sysconf(_SC_NPROCESSORS_ONLN),
          (double)kq_bench_llc_bytes() / 1048576.0);
  for (int i = 0; i < rep->n_devices; i++)
    fprintf(out, "device %s: %s; %s; copy ceiling %.2f GB/s\n", rep->devices[i].info.name,
            rep->devices[i].info.description, rep->devices[i].info.driver,
            rep->devices[i].ceiling_gbps);
  fprintf(out, "\n%-10s %-8s %7s %9s %9s %-8s %6s %4s %4s %12s %12s %8s %6s %8s\n", "device", "op",
          "context", "H/Hk/d", "rank k/v", "layout", "bytes", "stor", "rope", "seconds", "tokens/s",
          "GB/s", "%ceil", "speedup");
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *r = &rep->items[i];
    if (!is_attention(r)) continue;
    char shape[32], ranks[24];
    snprintf(shape, sizeof shape, "%d/%d/%d", r->heads, r->kv_heads, r->head_dim);
    snprintf(ranks, sizeof ranks, "%d/%d", r->rank_k, r->rank_v);
    /* bytes: the fraction of a full F16 cache (transform-coded rows: reached
     * for the budget in parentheses in the notes) */
    fprintf(out, "%-10s %-8s %7d %9s %9s %-8s %6.3f %4s %4s %12.4g %12.4g %8.2f %6.1f %7.2fx\n",
            r->device, r->op, r->context, shape, ranks, r->layout ? r->layout : "-",
            r->bytes_fraction, r->storage, r->rope, r->seconds, r->tokens_per_s, r->gbps,
            r->pct_of_ceiling, r->speedup_vs_full);
  }
  bool header = false;
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *r = &rep->items[i];
    if (is_attention(r)) continue;
    if (!header) fprintf(out, "\nfitting (host, median seconds):\n"), header = true;
    fprintf(out, "  %-8s rows %-8d cols %-4d %10.4f s\n", r->op, r->context, r->head_dim,
            r->seconds);
  }
  for (int i = 0; i < rep->n_notes; i++) fprintf(out, "note: %s\n", rep->notes[i]);
}
