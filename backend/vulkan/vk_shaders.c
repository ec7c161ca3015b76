/*
 * vk_shaders.c — the SPIR-V of shaders/vulkan (*.comp files), compiled at build time
 * by glslangValidator into headers (build dir) and embedded here.
 */
#include <stddef.h>
#include <stdint.h>

#include "kq_spv_attend_dec_f16.h"
#include "kq_spv_attend_dec_f16_sg.h"
#include "kq_spv_attend_dec_f32.h"
#include "kq_spv_attend_dec_f32_sg.h"
#include "kq_spv_attend_f16.h"
#include "kq_spv_attend_f16_sg.h"
#include "kq_spv_attend_f32.h"
#include "kq_spv_attend_f32_sg.h"
#include "kq_spv_dequant_f16.h"
#include "kq_spv_dequant_f32.h"
#include "kq_spv_merge_up.h"
#include "kq_spv_project_f16.h"
#include "kq_spv_project_f32.h"
#include "kq_spv_project_seg_f16.h"
#include "kq_spv_project_seg_f32.h"
#include "kq_spv_qprep.h"
#include "kq_spv_reduce.h"
#include "kq_spv_up.h"
#include "vk_internal.h"

typedef struct vk_spirv {
  const uint32_t *code;
  size_t bytes;
  const char *name;
} vk_spirv;

#define VK_SPV(arr, nm)                                                                            \
  { arr, sizeof(arr), nm }

static const vk_spirv k_spirv[VK_SHADER_COUNT] = {
    [VK_SHADER_PROJECT_F32] = VK_SPV(kq_spv_project_f32, "project.comp (F32)"),
    [VK_SHADER_PROJECT_F16] = VK_SPV(kq_spv_project_f16, "project.comp (F16)"),
    [VK_SHADER_QPREP] = VK_SPV(kq_spv_qprep, "qprep.comp"),
    [VK_SHADER_ATTEND_F32] = VK_SPV(kq_spv_attend_f32, "attend.comp (F32)"),
    [VK_SHADER_ATTEND_F16] = VK_SPV(kq_spv_attend_f16, "attend.comp (F16)"),
    [VK_SHADER_ATTEND_F32_SG] = VK_SPV(kq_spv_attend_f32_sg, "attend.comp (F32, subgroups)"),
    [VK_SHADER_ATTEND_F16_SG] = VK_SPV(kq_spv_attend_f16_sg, "attend.comp (F16, subgroups)"),
    [VK_SHADER_REDUCE] = VK_SPV(kq_spv_reduce, "reduce.comp"),
    [VK_SHADER_UP] = VK_SPV(kq_spv_up, "up.comp"),
    [VK_SHADER_PROJECT_SEG_F32] = VK_SPV(kq_spv_project_seg_f32, "project_seg.comp (F32)"),
    [VK_SHADER_PROJECT_SEG_F16] = VK_SPV(kq_spv_project_seg_f16, "project_seg.comp (F16)"),
    [VK_SHADER_DEQUANT_F32] = VK_SPV(kq_spv_dequant_f32, "dequant.comp (F32)"),
    [VK_SHADER_DEQUANT_F16] = VK_SPV(kq_spv_dequant_f16, "dequant.comp (F16)"),
    [VK_SHADER_ATTEND_DEC_F32] = VK_SPV(kq_spv_attend_dec_f32, "attend_dec.comp (F32)"),
    [VK_SHADER_ATTEND_DEC_F16] = VK_SPV(kq_spv_attend_dec_f16, "attend_dec.comp (F16)"),
    [VK_SHADER_ATTEND_DEC_F32_SG] =
        VK_SPV(kq_spv_attend_dec_f32_sg, "attend_dec.comp (F32, subgroups)"),
    [VK_SHADER_ATTEND_DEC_F16_SG] =
        VK_SPV(kq_spv_attend_dec_f16_sg, "attend_dec.comp (F16, subgroups)"),
    [VK_SHADER_MERGE_UP] = VK_SPV(kq_spv_merge_up, "merge_up.comp"),
};

const uint32_t *vk_shader_code(vk_shader s, size_t *out_bytes, const char **out_name) {
  *out_bytes = k_spirv[s].bytes;
  *out_name = k_spirv[s].name;
  return k_spirv[s].code;
}
