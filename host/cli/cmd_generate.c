/* PLACEHOLDER: replaced by the owner of `kqsvd generate`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_generate(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd generate: not built yet\n");
  return 1;
}
