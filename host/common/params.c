/* Versioned parameter structs: the caller's struct_size says which version
 * of a public params struct it was compiled against. */
#include <string.h>

#include "kq_common.h"

kq_status kq_params_adopt(void *out, size_t size, size_t min_size, const void *given,
                          const char *what, const char *defaults_fn) {
  if (!given) return KQ_OK;
  size_t given_size;
  memcpy(&given_size, given, sizeof given_size);
  if (given_size < min_size || given_size > size)
    return kq_set_error(KQ_ERR_ABI,
                        "%s.struct_size is %zu; this library takes %zu to %zu bytes (start from "
                        "%s(), which sets it)",
                        what, given_size, min_size, size, defaults_fn);
  memcpy(out, given, given_size);
  memcpy(out, &size, sizeof size); /* the rest keeps the defaults */
  return KQ_OK;
}
