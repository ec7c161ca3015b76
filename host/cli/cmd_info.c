/* PLACEHOLDER: replaced by the owner of `kqsvd info`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_info(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd info: not built yet\n");
  return 1;
}
