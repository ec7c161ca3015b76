/* PLACEHOLDER: replaced by the owner of `kqsvd conformance`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_conformance(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd conformance: not built yet\n");
  return 1;
}
