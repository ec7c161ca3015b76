/* PLACEHOLDER: replaced by the owner of `kqsvd capture`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_capture(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd capture: not built yet\n");
  return 1;
}
