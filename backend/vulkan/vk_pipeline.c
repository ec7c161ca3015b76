/*
 * vk_pipeline.c — the descriptor/pipeline layout shared by every shader, the
 * in-process pipeline cache (keyed by shader + specialization constants,
 * built by kq_cache_create through vk_prepare, or else on first use) and
 * dispatch recording.
 */
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

kq_status vk_pipelines_init(kq_bdevice *d) {
  VkDescriptorSetLayoutBinding b[VK_MAX_BINDINGS];
  for (uint32_t i = 0; i < VK_MAX_BINDINGS; ++i)
    b[i] = (VkDescriptorSetLayoutBinding){.binding = i,
                                          .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          .descriptorCount = 1,
                                          .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
  VkDescriptorSetLayoutCreateInfo li = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
      .flags = d->push_desc ? VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR : 0u,
      .bindingCount = VK_MAX_BINDINGS,
      .pBindings = b};
  if (vkCreateDescriptorSetLayout(d->dev, &li, NULL, &d->set_layout) != VK_SUCCESS)
    return VK_ERR(KQ_ERR_DEVICE, "%s: vkCreateDescriptorSetLayout failed", d->name);
  VkPushConstantRange pr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, VK_PUSH_BYTES};
  VkPipelineLayoutCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                   .setLayoutCount = 1,
                                   .pSetLayouts = &d->set_layout,
                                   .pushConstantRangeCount = 1,
                                   .pPushConstantRanges = &pr};
  if (vkCreatePipelineLayout(d->dev, &pi, NULL, &d->pipe_layout) != VK_SUCCESS)
    return VK_ERR(KQ_ERR_DEVICE, "%s: vkCreatePipelineLayout failed", d->name);
  return vk_pcache_open(d);
}

void vk_pipelines_destroy(kq_bdevice *d) {
  vk_pcache_close(d);
  for (int i = 0; i < d->n_pipes; ++i) vkDestroyPipeline(d->dev, d->pipes[i].pipeline, NULL);
  free(d->pipes);
  d->pipes = NULL;
  d->n_pipes = 0;
  for (int i = 0; i < VK_SHADER_COUNT; ++i)
    if (d->modules[i]) vkDestroyShaderModule(d->dev, d->modules[i], NULL);
  if (d->pipe_layout) vkDestroyPipelineLayout(d->dev, d->pipe_layout, NULL);
  if (d->set_layout) vkDestroyDescriptorSetLayout(d->dev, d->set_layout, NULL);
}

/* Caller holds pipe_lock. */
static kq_status create_pipeline(kq_bdevice *d, vk_shader shader, const uint32_t *spec,
                                 VkPipeline *out) {
  size_t bytes;
  const char *name;
  const uint32_t *code = vk_shader_code(shader, &bytes, &name);
  if (!d->modules[shader]) {
    VkShaderModuleCreateInfo mi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = bytes, .pCode = code};
    if (vkCreateShaderModule(d->dev, &mi, NULL, &d->modules[shader]) != VK_SUCCESS)
      return VK_ERR(KQ_ERR_DEVICE, "%s: %s: vkCreateShaderModule failed", d->name, name);
  }
  VkSpecializationMapEntry map[VK_SPEC_COUNT];
  for (uint32_t i = 0; i < VK_SPEC_COUNT; ++i) map[i] = (VkSpecializationMapEntry){i, i * 4, 4};
  VkSpecializationInfo si = {VK_SPEC_COUNT, map, VK_SPEC_COUNT * 4, spec};
  VkComputePipelineCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = d->modules[shader],
                .pName = "main",
                .pSpecializationInfo = &si},
      .layout = d->pipe_layout};
  VkResult r = vkCreateComputePipelines(d->dev, d->pcache, 1, &ci, NULL, out);
  d->pcache_dirty = true;
  if (r != VK_SUCCESS)
    return VK_ERR(KQ_ERR_DEVICE, "%s: %s: vkCreateComputePipelines failed (VkResult %d)", d->name,
                  name, (int)r);
  return KQ_OK;
}

static kq_status get_pipeline(kq_bdevice *d, vk_shader shader, const uint32_t *spec,
                              VkPipeline *out) {
  kq_status st = KQ_OK;
  pthread_mutex_lock(&d->pipe_lock);
  for (int i = 0; i < d->n_pipes; ++i)
    if (d->pipes[i].shader == shader && !memcmp(d->pipes[i].spec, spec, sizeof d->pipes[i].spec)) {
      *out = d->pipes[i].pipeline;
      pthread_mutex_unlock(&d->pipe_lock);
      return KQ_OK;
    }
  if (d->n_pipes == d->cap_pipes) {
    int cap = d->cap_pipes ? 2 * d->cap_pipes : 16;
    vk_pipeline_entry *p = realloc(d->pipes, (size_t)cap * sizeof *p);
    if (!p) {
      pthread_mutex_unlock(&d->pipe_lock);
      return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "vulkan: pipeline cache");
    }
    d->pipes = p;
    d->cap_pipes = cap;
  }
  st = create_pipeline(d, shader, spec, out);
  if (st == KQ_OK) VK_COUNT(d, pipelines, 1);
  if (st == KQ_OK) {
    vk_pipeline_entry *e = &d->pipes[d->n_pipes++];
    e->shader = shader;
    memcpy(e->spec, spec, sizeof e->spec);
    e->pipeline = *out;
  }
  pthread_mutex_unlock(&d->pipe_lock);
  return st;
}

kq_status vk_dispatch(kq_bdevice *d, vk_frame *f, vk_shader shader,
                      const uint32_t spec[VK_SPEC_COUNT], const vk_binding *bindings,
                      int n_bindings, const void *push, uint32_t push_bytes, uint32_t gx,
                      uint32_t gy, uint32_t gz) {
  if (gx == 0 || gy == 0 || gz == 0) return KQ_OK;
  if (push_bytes == 0 || push_bytes > VK_PUSH_BYTES || push_bytes % 4)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "%s: %u bytes of push constants", d->name, push_bytes);
  const uint32_t *lim = d->props.limits.maxComputeWorkGroupCount;
  if (gx > lim[0] || gy > lim[1] || gz > lim[2])
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: dispatch of %ux%ux%u workgroups exceeds the device limit", d->name, gx, gy,
                  gz);
  VkPipeline pipe;
  kq_status st = get_pipeline(d, shader, spec, &pipe);
  VkDescriptorSet set = VK_NULL_HANDLE;
  if (st == KQ_OK && !d->push_desc) st = vk_frame_descriptor(d, f, &set);
  if (st != KQ_OK) return st;
  VkDescriptorBufferInfo info[VK_MAX_BINDINGS];
  VkWriteDescriptorSet w[VK_MAX_BINDINGS];
  for (int i = 0; i < VK_MAX_BINDINGS; ++i) {
    if (i < n_bindings && bindings[i].buffer)
      info[i] = (VkDescriptorBufferInfo){bindings[i].buffer, bindings[i].offset, bindings[i].range};
    else
      info[i] = (VkDescriptorBufferInfo){d->dummy.buffer, 0, VK_WHOLE_SIZE};
    w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                  .dstSet = set,
                                  .dstBinding = (uint32_t)i,
                                  .descriptorCount = 1,
                                  .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                  .pBufferInfo = &info[i]};
  }
  vkCmdBindPipeline(f->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
  if (d->push_desc) {
    vkCmdPushDescriptorSetKHR(f->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->pipe_layout, 0,
                              VK_MAX_BINDINGS, w);
  } else {
    vkUpdateDescriptorSets(d->dev, VK_MAX_BINDINGS, w, 0, NULL);
    vkCmdBindDescriptorSets(f->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->pipe_layout, 0, 1, &set, 0,
                            NULL);
  }
  vkCmdPushConstants(f->cmd, d->pipe_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
  VK_COUNT(d, dispatches, 1);
  vkCmdDispatch(f->cmd, gx, gy, gz);
  return KQ_OK;
}

static size_t zmax(size_t a, size_t b) {
  return a > b ? a : b;
}

/* The pipelines of the ops depend on their shapes, formats and offsets, not
 * on the token counts, except where a count picks the kernel: attend takes
 * the decode kernels up to VK_DECODE_MAX_QUERIES queries and specializes the tiled ones for one
 * query or several. So one token, and 1, 2 and VK_DECODE_MAX_QUERIES + 1 queries (those not above
 * the bound), cover every count up to the bound. The core describes the full output (value_up set);
 * a cache may also be asked for the latent output, whose merge is another pipeline: each attend
 * also runs without value_up. The ops run for real on zeros: creating a pipeline is not always the
 * whole compilation (Mesa lavapipe generates the machine code of a shader at its first dispatch).
 */
kq_status vk_prepare(kq_bdevice *d, const kq_project_op *append_keys,
                     const kq_project_op *append_values, const kq_attend_op *attend,
                     const kq_up_op *up) {
  const kq_project_op *appends[2] = {append_keys, append_values};
  const int32_t counts[] = {1, 2, VK_DECODE_MAX_QUERIES + 1};
  /* Bytes of the inputs and outputs the core left NULL, for the largest count. */
  size_t need = 16;
  for (int i = 0; i < 2; ++i)
    if (appends[i]) need = zmax(need, (size_t)appends[i]->n_heads * appends[i]->head_dim * 4);
  if (attend) {
    size_t n = attend->n_queries < counts[2] ? (size_t)attend->n_queries : (size_t)counts[2];
    size_t row = zmax((size_t)attend->head_dim, (size_t)attend->rank_v);
    need = zmax(need, n * (size_t)attend->n_heads * row * 4);
  }
  if (up) need = zmax(need, (size_t)up->n_heads * zmax(up->head_dim, up->rank_v) * 4);
  kq_buffer *in = NULL, *out = NULL;
  void *zeros = calloc(1, need);
  if (!zeros) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: prepare", d->name);
  kq_status st = vk_upload_new(d, zeros, need, &in);
  free(zeros);
  if (st == KQ_OK) st = vk_buffer_alloc(d, need, &out);
  for (int i = 0; i < 2 && st == KQ_OK; ++i) {
    if (!appends[i] || appends[i]->n_tokens < 1) continue;
    kq_project_op op = *appends[i];
    if (!op.src) {
      op.src = in;
      op.src_offset = 0;
    }
    op.n_tokens = 1;
    op.pos = 0; /* a position the new cache does not hold yet */
    st = vk_op_project(d, &op);
  }
  for (int i = 0; attend && i < 3 && st == KQ_OK; ++i) {
    if (counts[i] > attend->n_queries) break;
    kq_attend_op op = *attend;
    if (!op.q) {
      op.q = in;
      op.q_offset = 0;
    }
    if (!op.out) {
      op.out = out;
      op.out_offset = 0;
    }
    op.n_queries = op.n_ctx = counts[i];
    st = vk_op_attend(d, &op);
    if (st == KQ_OK && op.value_up) { /* the latent output */
      op.value_up = NULL;
      op.value_up_offset = 0;
      st = vk_op_attend(d, &op);
    }
  }
  if (up && up->n_queries >= 1 && st == KQ_OK) {
    kq_up_op op = *up;
    if (!op.latent) {
      op.latent = in;
      op.latent_offset = 0;
    }
    if (!op.out) {
      op.out = out;
      op.out_offset = 0;
    }
    op.n_queries = 1;
    st = vk_op_up(d, &op);
  }
  /* Waits for the runs, and leaves the frame ring as after any completed work. */
  kq_status sync = vk_synchronize(d);
  if (st == KQ_OK) st = sync;
  if (in) vk_buffer_free(d, in);
  if (out) vk_buffer_free(d, out);
  return st;
}
