/* PLACEHOLDER: replaced by the owner of `kqsvd eval`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_eval(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd eval: not built yet\n");
  return 1;
}
