/*
 * ocl_gemm.c — SGEMMs through CLBlast, and its one-time kernel warm-up.
 *
 * CLBlast compiles its kernels on the first call of each routine on a
 * device (seconds to tens of seconds with PoCL's LLVM back end; later runs
 * hit the driver's own compiler cache). kq_ocl_gemm_warmup pays that once,
 * on the first GEMM a device needs, and records the time so that it shows up
 * in the device's info instead of hiding inside the first append.
 */
#include <clblast_c.h>
#include <stdio.h>

#include "ocl_internal.h"

static kq_status clblast_fail(kq_bdevice *dev, const char *what, CLBlastStatusCode code) {
  if (code > -1000)
    return kq_ocl_fail(dev,
                       code == CLBlastTempBufferAllocFailure ? KQ_ERR_DEVICE_MEMORY : KQ_ERR_DEVICE,
                       what, (cl_int)code);
  return kq_ocl_host->set_error(KQ_ERR_DEVICE, "%s: %s: CLBlast status %d", dev->label, what,
                                (int)code);
}

kq_status kq_ocl_gemm_strided_batched(kq_bdevice *dev, size_t m, size_t n, size_t k, cl_mem a,
                                      size_t a_off, size_t lda, size_t sa, cl_mem b, size_t b_off,
                                      size_t ldb, size_t sb, cl_mem c, size_t c_off, size_t ldc,
                                      size_t sc, size_t batch) {
  kq_status st = kq_ocl_gemm_warmup(dev);
  if (st != KQ_OK) return st;
  CLBlastStatusCode r = CLBlastSgemmStridedBatched(
      CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, m, n, k, 1.0f, a, a_off, lda,
      sa, b, b_off, ldb, sb, 0.0f, c, c_off, ldc, sc, batch, &dev->queue, NULL);
  dev->stats.dispatches++;
  if (r != CLBlastSuccess) return clblast_fail(dev, "CLBlastSgemmStridedBatched", r);
  return KQ_OK;
}

kq_status kq_ocl_gemm(kq_bdevice *dev, int b_trans, size_t m, size_t n, size_t k, float alpha,
                      cl_mem a, size_t a_off, size_t lda, cl_mem b, size_t b_off, size_t ldb,
                      cl_mem c, size_t c_off, size_t ldc) {
  kq_status st = kq_ocl_gemm_warmup(dev);
  if (st != KQ_OK) return st;
  const CLBlastTranspose tb = b_trans ? CLBlastTransposeYes : CLBlastTransposeNo;
  size_t temp_bytes = 0;
  CLBlastStatusCode r =
      CLBlastSGemmTempBufferSize(CLBlastLayoutRowMajor, CLBlastTransposeNo, tb, m, n, k, a_off, lda,
                                 b_off, ldb, c_off, ldc, &dev->queue, &temp_bytes);
  if (r != CLBlastSuccess) return clblast_fail(dev, "CLBlastSGemmTempBufferSize", r);
  /* The temporary buffer persists on the device and only grows. */
  cl_mem temp;
  st = kq_ocl_scratch(dev, KQ_S_CLBLAST, temp_bytes, &temp);
  if (st != KQ_OK) return st;
  r = CLBlastSgemmWithTempBuffer(CLBlastLayoutRowMajor, CLBlastTransposeNo, tb, m, n, k, alpha, a,
                                 a_off, lda, b, b_off, ldb, 0.0f, c, c_off, ldc, &dev->queue, NULL,
                                 temp);
  dev->stats.dispatches++;
  if (r != CLBlastSuccess) return clblast_fail(dev, "CLBlastSgemmWithTempBuffer", r);
  return KQ_OK;
}

kq_status kq_ocl_gemm_warmup(kq_bdevice *dev) {
  if (dev->gemm_warm) return KQ_OK;
  dev->gemm_warm = 1; /* the calls below re-enter the wrappers */
  double t0 = kq_ocl_now();
  const size_t n = 256;
  cl_int err;
  cl_mem buf[3] = {NULL, NULL, NULL};
  kq_status st = KQ_OK;
  for (int i = 0; i < 3 && st == KQ_OK; ++i) {
    buf[i] = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, 2 * n * n * sizeof(float), NULL, &err);
    dev->stats.device_allocations++;
    if (err != CL_SUCCESS) st = kq_ocl_fail(dev, KQ_ERR_DEVICE_MEMORY, "CLBlast warm-up", err);
  }
  /* The shapes the backend uses: decode-size and prefill-size projections,
   * then the two prefill products (Q̃K̃ᵀ and PṼ). */
  if (st == KQ_OK)
    st = kq_ocl_gemm_strided_batched(dev, 1, 64, 128, buf[0], 0, 256, 128, buf[1], 0, 64, 8192,
                                     buf[2], 0, 64, 8192, 2);
  if (st == KQ_OK)
    st = kq_ocl_gemm_strided_batched(dev, n, 64, 128, buf[0], 0, 256, 128, buf[1], 0, 64, 8192,
                                     buf[2], 0, 64, 16384, 2);
  if (st == KQ_OK)
    st = kq_ocl_gemm(dev, 1, n, n, 64, 1.0f, buf[0], 0, 64, buf[1], 0, 64, buf[2], 0, n);
  if (st == KQ_OK)
    st = kq_ocl_gemm(dev, 0, n, 64, n, 1.0f, buf[0], 0, n, buf[1], 0, 64, buf[2], 0, 64);
  if (st == KQ_OK) {
    err = clFinish(dev->queue);
    dev->stats.host_waits++;
    if (err != CL_SUCCESS) st = kq_ocl_fail(dev, KQ_ERR_DEVICE, "CLBlast warm-up", err);
  }
  for (int i = 0; i < 3; ++i)
    if (buf[i]) clReleaseMemObject(buf[i]);
  if (st != KQ_OK) {
    dev->gemm_warm = 0;
    return st;
  }
  dev->gemm_warmup_s = kq_ocl_now() - t0;
  kq_ocl_note_timings(dev->index, -1.0, 0, dev->gemm_warmup_s);
  return KQ_OK;
}
