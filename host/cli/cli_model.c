/* Steps the model commands share (cli_model.h). */
#include <stdio.h>

#include "cli_model.h"
#include "kq_model_run.h"

kq_status kq_cli_check_proj(const char *cmd, kq_llama *m, const char *proj) {
  int unknown = 0;
  kq_status st = kq_model_check_projection_file(m, proj, &unknown);
  if (st == KQ_OK && unknown)
    fprintf(stderr,
            "kqsvd %s: warning: %s records no model identity (written before model_sha256 was "
            "recorded), so it cannot be checked against %s; fit it again from a new capture to "
            "record one\n",
            cmd, proj, kq_llama_path(m));
  return st;
}
