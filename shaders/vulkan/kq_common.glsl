// kq_common.glsl — declarations shared by every kqsvd compute shader.
//
// Push constants are 32 untyped words; each shader names the words it uses
// next to its bindings. Offsets are in elements of the bound array, relative
// to a descriptor bound at an aligned byte offset (the host splits large
// buffers so that no binding exceeds maxStorageBufferRange).
#extension GL_EXT_control_flow_attributes : enable

#if KQ_F16
#extension GL_EXT_shader_16bit_storage : require
#define CACHE_T float16_t
#define CACHE_T4 f16vec4
#else
#define CACHE_T float
#define CACHE_T4 vec4
#endif

layout(push_constant) uniform kq_push {
  uint u[32];
} pc;

// Finite "minus infinity": the kernels never create Inf, so they stay correct
// on drivers compiled with no-Inf/NaN fast-math assumptions.
const float KQ_NEG = -1.0e30;
