/* kqsvd — command-line entry point: dispatches to one command per file. */
#include <stdio.h>
#include <string.h>

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

static const command *find_command(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (!strcmp(name, g_commands[i].name)) return &g_commands[i];
  return NULL;
}

int main(int argc, char **argv) {
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
