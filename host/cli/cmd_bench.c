/* PLACEHOLDER: replaced by the owner of `kqsvd bench`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_bench(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd bench: not built yet\n");
  return 1;
}
