/*
 * cmd_devices.c — `kqsvd devices [--json]`: every compute device the library
 * finds (the built-in cpu first, then the devices of each loaded backend
 * module) and the problems met while loading modules (refused ABI version,
 * failed dlopen, ...).
 */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../../backend/core/kq_core.h"
#include "cli_util.h"
#include "commands.h"
#include "kqsvd.h"

static void usage(FILE *out) {
  fprintf(out, "usage: kqsvd devices [--json]\n\n"
               "Lists the compute devices: name (what --device and KQSVD_DEVICE take),\n"
               "backend, description, vendor, type, memory, F16 storage support, subgroup\n"
               "size and driver; then any backend module that could not be used and why.\n"
               "Modules (libkqsvd-NAME.so) are searched next to libkqsvd and in the folders\n"
               "of KQSVD_BACKEND_PATH (':'-separated).\n\n"
               "options:\n"
               "  --json        print one JSON object {\"devices\": [...], \"problems\": [...]}\n"
               "  -q, --quiet   accepted for symmetry (devices prints only results)\n"
               "  -v, --verbose accepted for symmetry\n"
               "  -h, --help    this text\n\n"
               "exit status: 0 success, 1 failure, 2 usage error\n");
}

static const char *type_name(kq_device_type t) {
  switch (t) {
  case KQ_DEVICE_TYPE_CPU: return "CPU";
  case KQ_DEVICE_TYPE_GPU_DISCRETE: return "GPU (discrete)";
  case KQ_DEVICE_TYPE_GPU_INTEGRATED: return "GPU (integrated)";
  case KQ_DEVICE_TYPE_GPU_VIRTUAL: return "GPU (virtual)";
  default: return "other";
  }
}

static int print_json(int n) {
  cJSON *root = cJSON_CreateObject();
  cJSON *devs = cJSON_AddArrayToObject(root, "devices");
  for (int i = 0; i < n; i++) {
    kq_device_info d;
    kq_status st = kq_device_info_get(i, &d);
    if (st != KQ_OK) {
      cJSON_Delete(root);
      return kq_cli_fail("devices", st);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", d.name);
    cJSON_AddStringToObject(o, "backend", d.backend);
    cJSON_AddStringToObject(o, "description", d.description);
    cJSON_AddStringToObject(o, "vendor", d.vendor);
    cJSON_AddStringToObject(o, "type", type_name(d.type));
    cJSON_AddNumberToObject(o, "memory_bytes", (double)d.memory_bytes);
    cJSON_AddNumberToObject(o, "max_buffer_bytes", (double)d.max_buffer_bytes);
    cJSON_AddBoolToObject(o, "fp16_storage", d.fp16_storage != 0);
    cJSON_AddNumberToObject(o, "subgroup_size", d.subgroup_size);
    cJSON_AddNumberToObject(o, "compute_units", d.compute_units);
    cJSON_AddStringToObject(o, "driver", d.driver);
    cJSON_AddStringToObject(o, "extensions", d.extensions);
    cJSON_AddItemToArray(devs, o);
  }
  cJSON *probs = cJSON_AddArrayToObject(root, "problems");
  for (int i = 0; i < kq_backend_problem_count(); i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", kq_status_string(kq_backend_problem_status(i)));
    cJSON_AddStringToObject(o, "message", kq_backend_problem(i));
    cJSON_AddItemToArray(probs, o);
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) {
    fprintf(stderr, "kqsvd devices: out of memory\n");
    return 1;
  }
  printf("%s\n", text);
  cJSON_free(text);
  return 0;
}

static int print_text(int n) {
  for (int i = 0; i < n; i++) {
    kq_device_info d;
    kq_status st = kq_device_info_get(i, &d);
    if (st != KQ_OK) return kq_cli_fail("devices", st);
    printf("%s\n", d.name);
    printf("  backend        %s\n", d.backend);
    printf("  description    %s\n", d.description);
    printf("  vendor         %s\n", d.vendor);
    printf("  type           %s\n", type_name(d.type));
    printf("  memory         %.2f GiB (largest buffer %.2f GiB)\n",
           (double)d.memory_bytes / (1024.0 * 1024.0 * 1024.0),
           (double)d.max_buffer_bytes / (1024.0 * 1024.0 * 1024.0));
    printf("  fp16 storage   %s\n", d.fp16_storage ? "yes" : "no");
    if (d.subgroup_size > 0)
      printf("  subgroup size  %d\n", d.subgroup_size);
    else
      printf("  subgroup size  n/a\n");
    printf("  compute units  %d\n", d.compute_units);
    printf("  driver         %s\n", d.driver);
    if (d.extensions[0]) printf("  features       %s\n", d.extensions);
  }
  int np = kq_backend_problem_count();
  if (np > 0) {
    printf("\nbackend modules not used:\n");
    for (int i = 0; i < np; i++)
      printf("  %s: %s\n", kq_status_string(kq_backend_problem_status(i)), kq_backend_problem(i));
  }
  return 0;
}

int kq_cmd_devices(int argc, char **argv) {
  int json = 0;
  static const struct option options[] = {
      {"json", no_argument, NULL, 'j'}, KQ_CLI_COMMON_LONG, {NULL, 0, NULL, 0}};
  int c;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt("devices", argc, argv, KQ_CLI_COMMON_SHORT, options)) != -1) {
    if (c == 'h') {
      usage(stdout);
      return 0;
    }
    if (c != 'j') return 2;
    json = 1;
  }
  if (optind < argc) return kq_cli_usage_error("devices", "unknown argument '%s'", argv[optind]);
  int n = 0;
  kq_status st = kq_device_count(&n);
  if (st != KQ_OK) return kq_cli_fail("devices", st);
  return json ? print_json(n) : print_text(n);
}
