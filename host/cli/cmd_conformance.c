/*
 * cmd_conformance.c — `kqsvd conformance`: runs the conformance case table
 * (tests/conformance/suite) on one device or all of them and prints a table
 * of device × case (NMSE, threshold, pass) or JSON. Exit status 1 if any
 * case fails or a device cannot be opened, 2 for usage errors.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "conformance.h"

static const char *CMD = "conformance";

static void usage(FILE *out) {
  fprintf(out, "usage: kqsvd conformance [--device NAME|all] [--filter REGEX] [--json] [--list]\n"
               "       kqsvd conformance --list-devices\n\n"
               "Runs every attention op of a device (append, attend, truncate; F32/F16 storage;\n"
               "RoPE none/post/pre; latent and full outputs) against a float64 reference and\n"
               "compares them by NMSE = sum (a-b)^2 / sum b^2 with a per-case threshold.\n\n"
               "  --device NAME   cpu, vulkan:N, opencl:N, or all (every device found);\n"
               "                  default: $KQSVD_DEVICE, else cpu\n"
               "  --filter REGEX  run only cases whose name matches (POSIX extended regex)\n"
               "  --json          print the results as JSON on stdout\n"
               "  --list          print the selected case names and exit\n"
               "  --list-devices  print the device names, one per line, and exit\n"
               "  -q, --quiet     only errors and the results\n"
               "  -v, --verbose   more detail\n"
               "  -h, --help      this text\n\n"
               "A case with F16 storage on a device that reports no F16 support is skipped\n"
               "(listed as skip, neither passed nor failed). A case with quantized latent\n"
               "segments or the joint layout that the device answers with KQ_ERR_UNSUPPORTED\n"
               "is listed as unsup, counted apart, neither passed nor failed.\n\n"
               "Exit status: 0 no case failed, 1 a case failed or a device could not be\n"
               "opened, 2 usage error.\n");
}

typedef struct device_run {
  char name[32];
  char description[256];
  kq_status status; /* of opening the device */
  char error[512];
  kqc_result *results;
  int passed, skipped, unsupported;
  double seconds, device_seconds;
} device_run;

static void print_row(void *user, const kqc_result *r, int done, int total) {
  (void)done, (void)total;
  if (!user) return; /* JSON mode prints at the end */
  const char *dev = user;
  if (r->skipped || r->unsupported) {
    printf("%-10s %-76s %10s %10s %-5s %8.3f %8.3f\n           %s\n", dev, r->name, "-", "-",
           r->skipped ? "skip" : "unsup", r->seconds, r->device_seconds, r->error);
    fflush(stdout);
    return;
  }
  if (r->threshold > 0 || !r->pass)
    printf("%-10s %-76s %10.3e %10.3e %-5s %8.3f %8.3f\n", dev, r->name, r->nmse, r->threshold,
           r->pass ? "ok" : "FAIL", r->seconds, r->device_seconds);
  else
    printf("%-10s %-76s %10s %10s %-5s %8.3f %8.3f\n", dev, r->name, "error", "expected", "ok",
           r->seconds, r->device_seconds);
  if (!r->pass) printf("           %s\n", r->error);
  fflush(stdout);
}

static int list_devices(void) {
  int count = 0;
  kq_status st = kq_device_count(&count);
  if (st != KQ_OK) return kq_cli_fail(CMD, st);
  for (int i = 0; i < count; i++) {
    kq_device_info info;
    if ((st = kq_device_info_get(i, &info)) != KQ_OK) return kq_cli_fail(CMD, st);
    printf("%s\n", info.name);
  }
  return 0;
}

static void run_device(device_run *dr, const int *indices, int n, int json) {
  kq_device *dev = NULL;
  dr->status = kq_cli_device_create("conformance", dr->name, &dev);
  if (dr->status != KQ_OK) {
    snprintf(dr->error, sizeof dr->error, "%s: %s", kq_status_string(dr->status), kq_last_error());
    return;
  }
  kq_device_info info;
  if (kq_device_get_info(dev, &info) == KQ_OK)
    snprintf(dr->description, sizeof dr->description, "%s", info.description);
  kq_device_destroy(dev);
  if (!json) printf("# %s: %s\n", dr->name, dr->description);
  double sum = 0;
  dr->status = kqc_run(dr->name, indices, n, dr->results, print_row, json ? NULL : dr->name);
  if (dr->status != KQ_OK) {
    snprintf(dr->error, sizeof dr->error, "%s: %s", kq_status_string(dr->status), kq_last_error());
    return;
  }
  double dev_sum = 0;
  for (int i = 0; i < n; i++) {
    dr->passed += dr->results[i].pass;
    dr->skipped += dr->results[i].skipped;
    dr->unsupported += dr->results[i].unsupported;
    sum += dr->results[i].seconds, dev_sum += dr->results[i].device_seconds;
  }
  dr->seconds = sum, dr->device_seconds = dev_sum;
}

static int print_json(const device_run *runs, int n_runs, int n, int ok) {
  cJSON *root = cJSON_CreateObject();
  cJSON *devs = cJSON_AddArrayToObject(root, "devices");
  if (!root || !devs) goto oom;
  for (int d = 0; d < n_runs; d++) {
    const device_run *dr = &runs[d];
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(devs, o)) goto oom;
    cJSON_AddStringToObject(o, "device", dr->name);
    cJSON_AddStringToObject(o, "description", dr->description);
    if (dr->status != KQ_OK) {
      cJSON_AddStringToObject(o, "error", dr->error);
      continue;
    }
    cJSON_AddNumberToObject(o, "passed", dr->passed);
    cJSON_AddNumberToObject(o, "skipped", dr->skipped);
    cJSON_AddNumberToObject(o, "unsupported", dr->unsupported);
    cJSON_AddNumberToObject(o, "failed", n - dr->passed - dr->skipped - dr->unsupported);
    cJSON_AddNumberToObject(o, "seconds", dr->seconds);
    cJSON_AddNumberToObject(o, "device_seconds", dr->device_seconds);
    cJSON *cases = cJSON_AddArrayToObject(o, "cases");
    if (!cases) goto oom;
    for (int i = 0; i < n; i++) {
      const kqc_result *r = &dr->results[i];
      cJSON *c = cJSON_CreateObject();
      if (!c || !cJSON_AddItemToArray(cases, c)) goto oom;
      cJSON_AddStringToObject(c, "name", r->name);
      int expected_error = r->pass && r->threshold == 0;
      cJSON_AddBoolToObject(c, "expect_error", expected_error);
      /* An expected error has nothing to compare: NMSE 0 by definition. */
      kq_cli_json_add_number(c, "nmse", expected_error ? 0.0 : r->nmse);
      kq_cli_json_add_number(c, "threshold", r->threshold);
      cJSON_AddBoolToObject(c, "pass", r->pass);
      cJSON_AddBoolToObject(c, "skipped", r->skipped);
      cJSON_AddBoolToObject(c, "unsupported", r->unsupported);
      cJSON_AddNumberToObject(c, "seconds", r->seconds);
      cJSON_AddNumberToObject(c, "device_seconds", r->device_seconds);
      cJSON_AddStringToObject(c, "error", r->error);
    }
  }
  cJSON_AddBoolToObject(root, "pass", ok);
  char *text = cJSON_Print(root);
  if (!text) goto oom;
  printf("%s\n", text);
  free(text);
  cJSON_Delete(root);
  return 0;
oom:
  cJSON_Delete(root);
  fprintf(stderr, "kqsvd %s: out of memory building JSON\n", CMD);
  return -1;
}

int kq_cmd_conformance(int argc, char **argv) {
  const char *device = NULL, *filter = NULL;
  int json = 0, list = 0;
  enum { OPT_JSON = 256, OPT_LIST, OPT_LIST_DEVICES, OPT_DEVICE, OPT_FILTER };
  static const struct option options[] = {{"json", no_argument, NULL, OPT_JSON},
                                          {"list", no_argument, NULL, OPT_LIST},
                                          {"list-devices", no_argument, NULL, OPT_LIST_DEVICES},
                                          {"device", required_argument, NULL, OPT_DEVICE},
                                          {"filter", required_argument, NULL, OPT_FILTER},
                                          KQ_CLI_COMMON_LONG,
                                          {NULL, 0, NULL, 0}};
  int c, list_devs = 0;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(CMD, argc, argv, KQ_CLI_COMMON_SHORT, options)) != -1) {
    switch (c) {
    case 'h': usage(stdout); return 0;
    case OPT_JSON: json = 1; break;
    case OPT_LIST: list = 1; break;
    case OPT_LIST_DEVICES: list_devs = 1; break;
    case OPT_DEVICE: device = optarg; break;
    case OPT_FILTER: filter = optarg; break;
    default: return 2;
    }
  }
  if (list_devs) {
    if (argc != 2) /* it takes nothing else; never ignore an argument */
      return kq_cli_usage_error(CMD, "--list-devices takes no other argument");
    return list_devices();
  }
  if (optind < argc) return kq_cli_usage_error(CMD, "unknown argument '%s'", argv[optind]);
  int count;
  (void)kqc_cases(&count);
  int *indices = malloc(sizeof(int) * (size_t)count);
  if (!indices) return kq_cli_fail(CMD, KQ_ERR_OUT_OF_MEMORY);
  char err[512];
  int n = 0;
  if (kqc_select(filter, indices, &n, err, sizeof err)) {
    free(indices);
    return kq_cli_usage_error(CMD, "%s", err);
  }
  if (list) {
    const kqc_case *cases = kqc_cases(&count);
    for (int i = 0; i < n; i++) {
      char name[128];
      kqc_case_name(&cases[indices[i]], name, sizeof name);
      printf("%s\n", name);
    }
    free(indices);
    return 0;
  }
  if (n == 0) {
    free(indices);
    return kq_cli_usage_error(CMD, "--filter '%s' matches no case (see --list)", filter);
  }

  /* The devices to run: one by name, or all. */
  int n_runs = 1;
  if (device && !strcmp(device, "all")) {
    kq_status st = kq_device_count(&n_runs);
    if (st != KQ_OK) {
      free(indices);
      return kq_cli_fail(CMD, st);
    }
  }
  device_run *runs = calloc((size_t)n_runs, sizeof *runs);
  int rc = 0;
  if (!runs) {
    free(indices);
    return kq_cli_fail(CMD, KQ_ERR_OUT_OF_MEMORY);
  }
  for (int d = 0; d < n_runs && rc == 0; d++) {
    device_run *dr = &runs[d];
    if (device && !strcmp(device, "all")) {
      kq_device_info info;
      kq_status st = kq_device_info_get(d, &info);
      if (st != KQ_OK)
        rc = kq_cli_fail(CMD, st);
      else
        snprintf(dr->name, sizeof dr->name, "%s", info.name);
    } else {
      const char *env = getenv("KQSVD_DEVICE");
      const char *name = device && device[0] ? device : env && env[0] ? env : "cpu";
      snprintf(dr->name, sizeof dr->name, "%s", name);
    }
    if (!(dr->results = calloc((size_t)n, sizeof(kqc_result)))) rc = 1;
  }
  if (rc) {
    for (int d = 0; d < n_runs; d++) free(runs[d].results);
    free(runs), free(indices);
    return rc;
  }
  if (!json)
    printf("%-10s %-76s %10s %10s %-5s %8s %8s\n", "device", "case", "nmse", "threshold", "pass",
           "seconds", "device_s");
  int ok = 1;
  for (int d = 0; d < n_runs; d++) {
    device_run *dr = &runs[d];
    run_device(dr, indices, n, json);
    if (dr->status != KQ_OK) {
      ok = 0;
      fprintf(stderr, "kqsvd %s: %s: %s\n", CMD, dr->name, dr->error);
      continue;
    }
    /* Skipped cases (F16 on a device without it) and unsupported ones
     * (quantized / joint not implemented) neither pass nor fail. */
    int failed = n - dr->passed - dr->skipped - dr->unsupported;
    if (failed) ok = 0;
    if (!json)
      printf("# %s: %d/%d cases passed, %d skipped, %d unsupported, %d failed in %.2f s (%.2f s "
             "in append/attend)\n",
             dr->name, dr->passed, n, dr->skipped, dr->unsupported, failed, dr->seconds,
             dr->device_seconds);
  }
  if (json && print_json(runs, n_runs, n, ok)) ok = 0;
  for (int d = 0; d < n_runs; d++) free(runs[d].results);
  free(runs), free(indices);
  return ok ? 0 : 1;
}
