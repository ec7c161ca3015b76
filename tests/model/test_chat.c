/*
 * generate --chat: the template family and default system prompt are read
 * from the template string, and the rendered prompt of SmolLM2 (the cached
 * GGUF; skipped when absent) tokenizes into its turn markers as single
 * special tokens around the message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kq_chat.h"
#include "kq_gguf.h"
#include "kq_tokenizer.h"

static char *render(const char *tmpl, const char *msg, kq_chat_format *f) {
  kq_chat_detect(tmpl, f);
  char *s = NULL;
  assert_int_equal(kq_chat_render(f, msg, &s), KQ_OK);
  return s;
}

static void chatml_template_with_a_literal_system_turn_keeps_it(void **state) {
  (void)state;
  const char *tmpl = "{% for message in messages %}{% if loop.first and messages[0]['role'] != "
                     "'system' %}{{ '<|im_start|>system\\nBe brief.\\nAnswer in French.<|im_end|>"
                     "\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
                     "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
  kq_chat_format f;
  char *s = render(tmpl, "Hi", &f);
  assert_int_equal(f.family, KQ_CHAT_CHATML);
  assert_false(f.guessed);
  assert_string_equal(f.default_system, "Be brief.\nAnswer in French.");
  assert_string_equal(s, "<|im_start|>system\nBe brief.\nAnswer in French.<|im_end|>\n"
                         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  free(s);
}

static void chatml_template_whose_system_turn_is_the_message_adds_none(void **state) {
  (void)state;
  /* The only "<|im_start|>system" is followed by an expression, not text. */
  const char *tmpl = "{% for m in messages %}{% if m['role'] == 'system' %}{{ '<|im_start|>system"
                     "\\n' + m['content'] + '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + "
                     "m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}";
  kq_chat_format f;
  char *s = render(tmpl, "2+2?", &f);
  assert_int_equal(f.family, KQ_CHAT_CHATML);
  assert_false(f.guessed);
  assert_string_equal(f.default_system, "");
  assert_string_equal(s, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  free(s);
}

static void llama3_header_template_renders_header_turns(void **state) {
  (void)state;
  const char *tmpl = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + "
                     "message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
                     "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ "
                     "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
  kq_chat_format f;
  char *s = render(tmpl, "Hello", &f);
  assert_int_equal(f.family, KQ_CHAT_LLAMA3);
  assert_false(f.guessed);
  assert_string_equal(s, "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n");
  free(s);
}

static void unknown_or_missing_template_falls_back_to_chatml_as_a_guess(void **state) {
  (void)state;
  const char *mistral = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]"
                        "{% endfor %}";
  const char *tmpls[2] = {mistral, NULL};
  for (int i = 0; i < 2; i++) {
    kq_chat_format f;
    char *s = render(tmpls[i], "x", &f);
    assert_true(f.guessed);
    assert_int_equal(f.family, KQ_CHAT_CHATML);
    assert_string_equal(s, "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
    free(s);
  }
}

static int32_t id_of(const kq_tokenizer *tok, const char *text) {
  for (int32_t id = 0; id < kq_tokenizer_vocab_size(tok); id++) {
    size_t len;
    const char *b = kq_tokenizer_token_bytes(tok, id, &len);
    if (b && len == strlen(text) && !memcmp(b, text, len)) return id;
  }
  return -1;
}

static void smollm2_prompt_has_its_system_turn_and_special_tokens(void **state) {
  (void)state;
  char path[4096];
  const char *dir = getenv("KQSVD_MODEL_DIR"), *home = getenv("HOME");
  if (dir && *dir)
    snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
  else
    snprintf(path, sizeof path, "%s/.cache/kqsvd/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : "");
  if (access(path, R_OK) != 0) skip(); /* .ci/fetch-model.sh fetches it */
  kq_gguf *g = NULL;
  assert_int_equal(kq_gguf_open(path, &g), KQ_OK);
  kq_gguf_str t;
  assert_int_equal(kq_gguf_get_str(g, "tokenizer.chat_template", &t), KQ_OK);
  char *tmpl = strndup(t.ptr, (size_t)t.len);
  kq_tokenizer *tok = NULL;
  assert_int_equal(kq_tokenizer_load(g, &tok), KQ_OK);
  kq_chat_format f;
  char *s = render(tmpl, "What is 2+2?", &f);
  /* SmolLM2's template adds this system turn when the chat has none. */
  const char *want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                     "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                     "<|im_start|>assistant\n";
  assert_string_equal(s, want);
  int32_t *ids = NULL, n = 0;
  assert_int_equal(kq_tokenizer_encode(tok, s, strlen(s), 1, &ids, &n), KQ_OK);
  int32_t start = id_of(tok, "<|im_start|>"), end = id_of(tok, "<|im_end|>");
  assert_true(start >= 0 && end >= 0);
  int n_start = 0, n_end = 0;
  char joined[1024] = "";
  size_t jl = 0;
  for (int32_t i = 0; i < n; i++) {
    n_start += ids[i] == start;
    n_end += ids[i] == end;
    size_t len;
    const char *b = kq_tokenizer_token_bytes(tok, ids[i], &len);
    assert_true(jl + len < sizeof joined);
    memcpy(joined + jl, b, len);
    jl += len;
  }
  joined[jl] = '\0';
  assert_int_equal(ids[0], start);
  assert_int_equal(n_start, 3); /* system, user, assistant */
  assert_int_equal(n_end, 2);
  assert_string_equal(joined, want);
  int32_t last = n - 1; /* the assistant turn opener ends the prompt */
  while (last > 0 && ids[last] != start) last--;
  size_t tail = 0;
  for (int32_t i = last + 1; i < n; i++) {
    size_t len;
    kq_tokenizer_token_bytes(tok, ids[i], &len);
    tail += len;
  }
  assert_int_equal(tail, strlen("assistant\n"));
  free(ids);
  free(s);
  free(tmpl);
  kq_tokenizer_destroy(tok);
  kq_gguf_close(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(chatml_template_with_a_literal_system_turn_keeps_it),
      cmocka_unit_test(chatml_template_whose_system_turn_is_the_message_adds_none),
      cmocka_unit_test(llama3_header_template_renders_header_turns),
      cmocka_unit_test(unknown_or_missing_template_falls_back_to_chatml_as_a_guess),
      cmocka_unit_test(smollm2_prompt_has_its_system_turn_and_special_tokens),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
