/* `generate --chat`: template family detection and rendering (kq_chat.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_chat.h"
#include "kq_common.h"

#define IM_SYSTEM "<|im_start|>system"
#define IM_END "<|im_end|>"

/* Copies a literal default system prompt that follows `p` (just past
 * "<|im_start|>system") up to <|im_end|>, turning Jinja's "\n" escapes into
 * newlines. 0 when what follows is not a literal (an expression such as
 * message['content'] comes after a quote or a '+'). */
static int copy_literal_system(const char *p, char *out, size_t cap) {
  if (p[0] == '\n')
    p += 1;
  else if (p[0] == '\\' && p[1] == 'n')
    p += 2;
  else
    return 0;
  const char *end = strstr(p, IM_END);
  if (!end || end == p) return 0;
  size_t n = 0;
  for (const char *s = p; s < end; s++) {
    if (*s == '\'' || *s == '"' || *s == '{' || *s == '}') return 0; /* not a plain literal */
    char ch = *s;
    if (ch == '\\' && s + 1 < end) {
      s++;
      ch = *s == 'n' ? '\n' : *s;
    }
    if (n + 1 >= cap) return 0;
    out[n++] = ch;
  }
  out[n] = '\0';
  return 1;
}

void kq_chat_detect(const char *tmpl, kq_chat_format *out) {
  memset(out, 0, sizeof *out);
  out->family = KQ_CHAT_CHATML;
  if (tmpl && strstr(tmpl, "<|start_header_id|>") && strstr(tmpl, "<|eot_id|>")) {
    out->family = KQ_CHAT_LLAMA3;
    return;
  }
  if (!tmpl || !strstr(tmpl, "<|im_start|>")) {
    out->guessed = 1;
    return;
  }
  for (const char *p = strstr(tmpl, IM_SYSTEM); p; p = strstr(p + 1, IM_SYSTEM))
    if (copy_literal_system(p + strlen(IM_SYSTEM), out->default_system, sizeof out->default_system))
      return;
  out->default_system[0] = '\0';
}

kq_status kq_chat_render(const kq_chat_format *f, const char *msg, char **out_text) {
  *out_text = NULL;
  size_t len = strlen(msg) + strlen(f->default_system) + 256;
  char *s = malloc(len);
  if (!s) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "chat prompt: out of memory");
  if (f->family == KQ_CHAT_LLAMA3)
    snprintf(s, len,
             "<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
             msg);
  else if (f->default_system[0])
    snprintf(s, len,
             "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
             "<|im_start|>assistant\n",
             f->default_system, msg);
  else
    snprintf(s, len, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", msg);
  *out_text = s;
  return KQ_OK;
}
