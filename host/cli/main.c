/* kqsvd — command-line entry point: dispatches to one command per file. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "kqsvd.h"

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command;

static const command g_commands[] = {
    {"synth", kq_cmd_synth, "write a synthetic calibration file"},
    {"fit", kq_cmd_fit, "fit KQ-SVD / K-SVD / Eigen projections from calibration data"},
    {"eval", kq_cmd_eval, "measure the fidelity of projections (SPEC §3 metrics)"},
    {"info", kq_cmd_info, "list the tensors and metadata of a safetensors or GGUF file"},
    {"devices", kq_cmd_devices, "list compute devices (cpu, vulkan:N, opencl:N)"},
    {"conformance", kq_cmd_conformance, "check every op on every device against float64"},
    {"bench", kq_cmd_bench, "measure attention and fitting speed against full attention"},
    {"capture", kq_cmd_capture, "run a GGUF model on text and write calibration data"},
    {"ppl", kq_cmd_ppl, "perplexity of a GGUF model with the full and compressed cache"},
    {"generate", kq_cmd_generate, "greedy generation with a compressed cache"},
};
#define N_COMMANDS (sizeof g_commands / sizeof g_commands[0])

static void usage(FILE *out) {
  fprintf(out,
          "kqsvd %s — KQ-SVD compressed attention\n\n"
          "usage: kqsvd COMMAND [ARGS...]\n"
          "       kqsvd COMMAND --help     (or: kqsvd help COMMAND)\n"
          "       kqsvd --version\n\n"
          "Every command takes -q/--quiet (only errors and results), -v/--verbose (more\n"
          "detail) and -h/--help; options take values as --opt V or --opt=V; -- ends options.\n"
          "\ncommands:\n",
          kq_version());
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(out, "  %-12s %s\n", g_commands[i].name, g_commands[i].summary);
  fprintf(out, "\nenvironment:\n"
               "  KQSVD_DEVICE        default device (default: cpu)\n"
               "  KQSVD_BACKEND_PATH  extra ':'-separated folders searched for backend modules\n"
               "  KQSVD_PROGRESS_INTERVAL  seconds between progress lines when stderr is not a\n"
               "                      terminal (default 5; 0 = every update)\n");
}

/* KQ_GIT_COMMIT, KQ_BUILD_BACKENDS, KQ_COMPILER: written at build time by
 * host/cli/build_info.cmake. */
#include "kq_cli_build_info.h"

static void version(void) {
  printf("kqsvd %s\n"
         "commit:   %s\n"
         "backends: %s\n"
         "compiler: %s\n",
         kq_version(), KQ_GIT_COMMIT, KQ_BUILD_BACKENDS, KQ_COMPILER);
}

/* The CLI links libkqsvd statically, so the core's registry (which looks
 * next to the binary that holds it) would search bin/. The backend modules
 * sit in the library folder, KQ_CLI_MODULE_DIR relative to the program
 * (bin/../lib in the build tree and when installed): put it first in
 * KQSVD_BACKEND_PATH, before any folders the user named. Before any library
 * call, so the registry sees it when it first loads. */
static void add_module_dir(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return;
  *slash = '\0';
  char dir[PATH_MAX + 64];
  struct stat st;
  snprintf(dir, sizeof dir, "%s/%s", exe, KQ_CLI_MODULE_DIR);
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return;
  const char *user = getenv("KQSVD_BACKEND_PATH");
  size_t len = strlen(dir) + (user ? strlen(user) + 1 : 0) + 1;
  char *path = malloc(len);
  if (!path) return;
  snprintf(path, len, "%s%s%s", dir, user && *user ? ":" : "", user && *user ? user : "");
  setenv("KQSVD_BACKEND_PATH", path, 1);
  free(path);
}

static const command *find_command(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (!strcmp(name, g_commands[i].name)) return &g_commands[i];
  return NULL;
}

int main(int argc, char **argv) {
  add_module_dir();
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "help") && argc >= 3) { /* kqsvd help CMD = kqsvd CMD --help */
    const command *c = find_command(argv[2]);
    if (!c || argc > 3) {
      fprintf(stderr, "kqsvd help: %s '%s' (see 'kqsvd --help')\n",
              c ? "unexpected argument" : "unknown command", argv[c ? 3 : 2]);
      return 2;
    }
    char *help_argv[] = {argv[2], "--help", NULL};
    return c->run(2, help_argv);
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V") || !strcmp(argv[1], "version")) {
    version();
    return 0;
  }
  const command *c = find_command(argv[1]);
  if (c) return c->run(argc - 1, argv + 1);
  fprintf(stderr, "kqsvd: unknown command '%s' (see 'kqsvd --help')\n", argv[1]);
  return 2;
}
