// kq_rope.glsl — RoPE angles from a two-level table (needs `rope_tab`).
//
// angle(pos, j) = pos * theta^(-2j/d) is split as pos = 256*hi + lo: the host
// fills cos/sin of both parts in float64 and the shader recombines them with
// the angle-addition formulas, so large positions keep full float precision.
// Layout: lo part [256][D/2][2] at element 0, hi part [n_hi][D/2][2] at hi_off.

vec2 kq_rope_cs(uint pos, uint j, uint half_d, uint hi_off) {
  uint lo = (pos & 255u) * half_d + j;
  uint hi = (pos >> 8u) * half_d + j;
  float c1 = rope_tab[2u * lo], s1 = rope_tab[2u * lo + 1u];
  float c2 = rope_tab[hi_off + 2u * hi], s2 = rope_tab[hi_off + 2u * hi + 1u];
  return vec2(c1 * c2 - s1 * s2, s1 * c2 + c1 * s2);
}

// Dimension pair rotated together by frequency j.
uvec2 kq_rope_pair(uint j, uint d, uint layout_halves) {
  return layout_halves != 0u ? uvec2(j, j + d / 2u) : uvec2(2u * j, 2u * j + 1u);
}
