/*
 * kq_cpu_backend.h — the CPU reference backend, compiled into libkqsvd.
 * The core reaches it only through its kq_backend_iface, like any module.
 */
#ifndef KQ_CPU_BACKEND_H
#define KQ_CPU_BACKEND_H

#include <stddef.h>

#include "kqsvd_backend.h"

/* The CPU backend's function table (static storage, never NULL). It has one
 * device, "cpu"; opening it several times returns handles that share the
 * backend's thread team. */
const kq_backend_iface *kq_cpu_backend_iface(void);

/* Internal to backend/cpu: a host buffer. */
struct kq_buffer {
  size_t size;
  unsigned char *data; /* 64-byte aligned */
};

/* Checks that [offset, offset + bytes) lies inside `buf`; on failure sets
 * KQ_ERR_INVALID_ARGUMENT naming `what`. */
kq_status kq_cpu_check_range(const kq_buffer *buf, size_t offset, size_t bytes, const char *what);

/* The ops (cpu_attend.c, cpu_project.c). */
kq_status kq_cpu_attend(kq_bdevice *device, const kq_attend_op *op);
kq_status kq_cpu_project(kq_bdevice *device, const kq_project_op *op);
kq_status kq_cpu_up(kq_bdevice *device, const kq_up_op *op);

#endif
