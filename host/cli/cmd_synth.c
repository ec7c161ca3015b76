/* PLACEHOLDER: replaced by the owner of `kqsvd synth`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_synth(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd synth: not built yet\n");
  return 1;
}
