/*
 * Output files (host/io/kq_output_file.h): a write never follows a planted
 * link, never replaces something that is not a regular file, never
 * overwrites one of its own inputs, and leaves a regular file or nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "io_test_util.h"
#include "kq_output_file.h"
#include "kq_safetensors.h"

static const char *g_dir;

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void read_text(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
}

static kq_status write_safetensors(const char *path) {
  static const float x[4] = {1, 2, 3, 4};
  const int64_t shape[1] = {4};
  kq_st_writer *w = NULL;
  kq_status st = kq_st_writer_create(path, &w);
  if (st == KQ_OK) st = kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, shape, x);
  if (st == KQ_OK) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  return st;
}

/* The old writer used "<out>.tmp.<pid>" opened without O_EXCL: a link
 * planted there made it overwrite the link's target and left the output a
 * link. Plant one at every name of that pattern the test can guess. */
static void planted_links_are_never_followed(void **state) {
  (void)state;
  char out[1024], victim[1024], link[1100];
  snprintf(out, sizeof out, "%s/out.safetensors", g_dir);
  snprintf(victim, sizeof victim, "%s/victim.txt", g_dir);
  write_text(victim, "precious");
  snprintf(link, sizeof link, "%s.tmp.%ld", out, (long)getpid());
  assert_int_equal(symlink(victim, link), 0);
  assert_int_equal(write_safetensors(out), KQ_OK);
  char buf[64];
  read_text(victim, buf, sizeof buf);
  assert_string_equal(buf, "precious");
  struct stat sb;
  assert_int_equal(lstat(out, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  assert_int_equal(sb.st_mode & 0777, 0644);
  unlink(link);
  unlink(out);
  unlink(victim);
}

static void non_regular_targets_are_refused_before_any_work(void **state) {
  (void)state;
  char fifo[1024], dir[1024], sock[1024];
  snprintf(fifo, sizeof fifo, "%s/fifo", g_dir);
  snprintf(dir, sizeof dir, "%s/adir", g_dir);
  snprintf(sock, sizeof sock, "%s/sock", g_dir);
  assert_int_equal(mkfifo(fifo, 0644), 0);
  assert_int_equal(mkdir(dir, 0755), 0);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  assert_true(strlen(sock) < sizeof addr.sun_path);
  memcpy(addr.sun_path, sock, strlen(sock) + 1);
  int bound = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
  const char *targets[] = {fifo, dir, bound ? sock : fifo, "/dev/null", "/dev/full"};
  const char *kinds[] = {"FIFO", "directory", bound ? "socket" : "FIFO", "device", "device"};
  for (int i = 0; i < 5; i++) {
    assert_int_equal(kq_output_check(targets[i], NULL), KQ_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kq_last_error(), targets[i]));
    assert_non_null(strstr(kq_last_error(), kinds[i]));
    kq_st_writer *w = NULL;
    assert_int_equal(kq_st_writer_create(targets[i], &w), KQ_ERR_INVALID_ARGUMENT);
    assert_null(w);
  }
  struct stat sb;
  assert_int_equal(stat("/dev/null", &sb), 0);
  assert_true(S_ISCHR(sb.st_mode));
  assert_int_equal(lstat(fifo, &sb), 0);
  assert_true(S_ISFIFO(sb.st_mode));
  close(fd);
  unlink(sock);
  unlink(fifo);
  rmdir(dir);
  /* Only what the test made itself is left: nothing. */
  assert_int_equal(io_test_count_entries(g_dir), 0);
}

static void an_output_that_is_an_input_is_refused(void **state) {
  (void)state;
  char in[1024], hard[1024], other[1024];
  snprintf(in, sizeof in, "%s/calib.safetensors", g_dir);
  snprintf(hard, sizeof hard, "%s/alias.safetensors", g_dir);
  snprintf(other, sizeof other, "%s/other.safetensors", g_dir);
  write_text(in, "input data");
  assert_int_equal(link(in, hard), 0);
  const char *inputs[] = {"/nonexistent/model.gguf", in, NULL};
  assert_int_equal(kq_output_check(in, inputs), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "is the input"));
  /* A hard link is the same file under another name. */
  assert_int_equal(kq_output_check(hard, inputs), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_output_check(other, inputs), KQ_OK);
  char buf[64];
  read_text(in, buf, sizeof buf);
  assert_string_equal(buf, "input data");
  unlink(hard);
  unlink(in);
}

static void a_text_output_is_complete_or_absent(void **state) {
  (void)state;
  char out[1024];
  snprintf(out, sizeof out, "%s/chart.svg", g_dir);
  kq_output_file f;
  assert_int_equal(kq_output_open(out, &f), KQ_OK);
  FILE *s = kq_output_stream(&f);
  assert_non_null(s);
  fputs("<svg/>\n", s);
  /* Not visible under its name before the commit. */
  assert_int_equal(access(out, F_OK), -1);
  kq_output_abort(&f);
  assert_int_equal(io_test_count_entries(g_dir), 0);
  assert_int_equal(kq_output_open(out, &f), KQ_OK);
  fputs("<svg/>\n", kq_output_stream(&f));
  assert_int_equal(kq_output_commit(&f), KQ_OK);
  char buf[64];
  read_text(out, buf, sizeof buf);
  assert_string_equal(buf, "<svg/>\n");
  assert_int_equal(io_test_count_entries(g_dir), 1);
  unlink(out);
}

int main(void) {
  g_dir = io_test_dir("io_output");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(planted_links_are_never_followed),
      cmocka_unit_test(non_regular_targets_are_refused_before_any_work),
      cmocka_unit_test(an_output_that_is_an_input_is_refused),
      cmocka_unit_test(a_text_output_is_complete_or_absent),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  io_test_remove_dir(g_dir);
  return failed;
}
