/*
 * kq_output_file.h — every file kqsvd writes goes through here, so that a
 * run never leaves a half-written output, never follows a planted link and
 * never overwrites something that is not a regular file or that it reads.
 *
 * A write creates a fresh temporary file in the target's folder with
 * O_CREAT | O_EXCL (mkostemp: an unpredictable name, no symlink followed),
 * writes it, fsyncs it, renames it onto the target and fsyncs the folder;
 * only then is it reported as done. Not installed.
 */
#ifndef KQ_OUTPUT_FILE_H
#define KQ_OUTPUT_FILE_H

#include <stddef.h>
#include <stdio.h>

#include "kq_common.h"

/* Checks, before any work, that `path` may be written: it does not exist or
 * is a regular file (a directory, device node, FIFO or socket is refused:
 * `-o /dev/null` must not replace /dev/null), its folder exists and is
 * writable, and it is not the same file (device and inode) as any of the
 * NULL-terminated `inputs` (NULL: none), so `fit c.st -o c.st` cannot
 * overwrite its own input. KQ_ERR_INVALID_ARGUMENT or KQ_ERR_IO naming
 * the path. */
kq_status kq_output_check(const char *path, const char *const *inputs);

typedef struct kq_output_file {
  char *path; /* the target */
  char *tmp;  /* the temporary file while it exists */
  int fd;
  int dir_fd;   /* the target's folder, opened up front (no allocation after the rename) */
  FILE *stream; /* kq_output_stream's stdio view of fd, or NULL */
} kq_output_file;

/* Runs kq_output_check(path, NULL) and creates the temporary file. On
 * failure *out is left closed (kq_output_abort is a no-op on it). */
kq_status kq_output_open(const char *path, kq_output_file *out);

/* Writes n bytes; `cancel` (may be NULL) is polled between chunks
 * (KQ_ERR_INTERRUPTED). Errors name the target. */
kq_status kq_output_write(kq_output_file *f, const void *data, size_t n,
                          const volatile int *cancel);

/* A stdio stream on the temporary file for text output (owned by f; do not
 * fclose it). NULL with an error set if it cannot be made. */
FILE *kq_output_stream(kq_output_file *f);

/* fsyncs and closes the temporary file, checks the target is still absent
 * or regular, renames it into place and fsyncs the folder. On any failure
 * the temporary file is removed and the target is unchanged. Always
 * releases f. */
kq_status kq_output_commit(kq_output_file *f);

/* Removes the temporary file and releases f (accepts a closed f). */
void kq_output_abort(kq_output_file *f);

#endif
