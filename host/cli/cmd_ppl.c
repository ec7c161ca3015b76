/* PLACEHOLDER: replaced by the owner of `kqsvd ppl`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_ppl(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd ppl: not built yet\n");
  return 1;
}
