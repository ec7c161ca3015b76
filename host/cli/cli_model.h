/*
 * cli_model.h — steps the model commands (ppl, generate) share.
 */
#ifndef KQ_CLI_MODEL_H
#define KQ_CLI_MODEL_H

#include "kq_llama.h"
#include "kqsvd.h"

/* Checks projection file `proj` against model `m` before any work (shapes
 * and model identity, kq_model_check_projection_file) and prints
 * "kqsvd CMD: warning: ..." to stderr when the file records no model to
 * check against. Returns the status; the error is kept for kq_cli_fail. */
kq_status kq_cli_check_proj(const char *cmd, kq_llama *m, const char *proj);

#endif /* KQ_CLI_MODEL_H */
