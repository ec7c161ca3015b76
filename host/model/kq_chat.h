/*
 * kq_chat.h — the chat prompt of `generate --chat`, from the model's own
 * template (GGUF tokenizer.chat_template) without a Jinja engine: the
 * template's family is recognised by its turn markers and rendered in C.
 */
#ifndef KQ_CHAT_H
#define KQ_CHAT_H

#include "kqsvd.h"

typedef enum kq_chat_family {
  KQ_CHAT_CHATML = 0, /* <|im_start|>ROLE\n ... <|im_end|>\n (SmolLM2, Qwen) */
  KQ_CHAT_LLAMA3 = 1, /* <|start_header_id|>ROLE<|end_header_id|>\n\n ... <|eot_id|> */
} kq_chat_family;

typedef struct kq_chat_format {
  kq_chat_family family;
  /* The system turn the template adds when the conversation has none
   * (SmolLM2: "You are a helpful AI assistant named SmolLM, ..."), "" if it
   * adds none. */
  char default_system[1024];
  /* 1 when the template is missing or of no known family: ChatML is
   * assumed (the caller warns). */
  int guessed;
} kq_chat_format;

/* The format of chat template `tmpl` (NULL: the GGUF has none). A default
 * system prompt is taken from a ChatML template only when it is a literal
 * "<|im_start|>system\n...<|im_end|>" in the template (Jinja "\n" escapes
 * are honoured). */
void kq_chat_detect(const char *tmpl, kq_chat_format *out);

/* The prompt for one user message followed by the assistant's turn opener
 * (add_generation_prompt), with the default system turn first if the format
 * has one. BOS is not written: the tokenizer adds it when the model asks
 * for it. *out_text is NUL-terminated (caller frees). */
kq_status kq_chat_render(const kq_chat_format *format, const char *user_message, char **out_text);

#endif /* KQ_CHAT_H */
