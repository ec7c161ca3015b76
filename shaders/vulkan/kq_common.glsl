// kq_common.glsl — declarations shared by every kqsvd compute shader.
//
// Push constants are the typed structs of kq_push.h (shared with the C
// side); each shader declares its block. Offsets are in elements of the
// bound array, relative to a descriptor bound at an aligned byte offset
// (the host splits large buffers so that no binding exceeds
// maxStorageBufferRange).
#extension GL_EXT_control_flow_attributes : enable

#if KQ_F16
#extension GL_EXT_shader_16bit_storage : require
#define CACHE_T float16_t
#define CACHE_T4 f16vec4
#else
#define CACHE_T float
#define CACHE_T4 vec4
#endif



// Finite "minus infinity": the kernels never create Inf, so they stay correct
// on drivers compiled with no-Inf/NaN fast-math assumptions.
const float KQ_NEG = -1.0e30;
// Finite marker of a row that met a NaN or Inf logit (kqsvd.h: that row's
// output is NaN). It rides through the running maximum like any logit and
// the reduce turns a maximum at or above KQ_POISON / 2 into NaN outputs.
const float KQ_POISON = 1.0e30;

// NaN or ±Inf, decided on the bits (exponent all ones), which no fast-math
// assumption can fold away.
bool kq_nonfinite(float x) {
  return (floatBitsToUint(x) & 0x7f800000u) == 0x7f800000u;
}
