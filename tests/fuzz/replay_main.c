/*
 * replay_main.c — runs a fuzz harness's LLVMFuzzerTestOneInput on every
 * file of the seed folders (and files) given as arguments, without libFuzzer:
 * the regression test for the corpus, built in the normal build. A crash,
 * sanitizer report or abort() in the harness fails the test; an unreadable
 * or empty seed folder fails it too, so it cannot pass having checked
 * nothing.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 1 << 16, n = 0;
  uint8_t *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      uint8_t *grown = realloc(buf, cap *= 2);
      if (!grown) free(buf);
      buf = grown;
    }
  }
  fclose(f);
  if (!buf) return -1;
  LLVMFuzzerTestOneInput(buf, n);
  free(buf);
  return 1;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char **grown = realloc(names, (n + 1) * sizeof *names);
    if (!grown) abort();
    names = grown;
    names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
    if (!names[n]) abort();
    sprintf(names[n], "%s/%s", dir, e->d_name);
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  int count = 0;
  for (size_t i = 0; i < n; i++) {
    int r = replay_file(names[i]);
    if (r < 0) count = -1000000;
    count += r > 0;
    free(names[i]);
  }
  free(names);
  return count;
}

int main(int argc, char **argv) {
  /* Absolute paths first: a harness's initialiser may change folder. */
  char **paths = calloc((size_t)argc, sizeof *paths);
  if (!paths) return 1;
  for (int i = 1; i < argc; i++) {
    paths[i] = realpath(argv[i], NULL);
    if (!paths[i]) {
      fprintf(stderr, "replay: %s: not found\n", argv[i]);
      return 1;
    }
  }
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  int total = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    int r = stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode) ? replay_dir(paths[i])
                                                            : replay_file(paths[i]);
    if (r <= 0) {
      fprintf(stderr, "replay: %s: no readable inputs\n", argv[i]);
      return 1;
    }
    total += r;
    free(paths[i]);
  }
  free(paths);
  printf("replay: %d inputs ran without a crash\n", total);
  return total > 0 ? 0 : 1;
}
