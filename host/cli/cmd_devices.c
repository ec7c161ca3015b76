/* PLACEHOLDER: replaced by the owner of `kqsvd devices`. */
#include <stdio.h>

#include "commands.h"

int kq_cmd_devices(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "kqsvd devices: not built yet\n");
  return 1;
}
