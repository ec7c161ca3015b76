/* PLACEHOLDER: replaced by the owner of `kqsvd fit`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_fit(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd fit: not built yet\n");
  return 1;
}
