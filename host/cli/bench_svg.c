/*
 * bench_svg.c — the `kqsvd bench --svg` chart, written by hand: one row per
 * device, left panel decode speedup over full attention, right panel decode
 * bandwidth as % of the device's copy ceiling, both against context length
 * on a log2 axis. Series: each head shape (solid Llama-like, dashed
 * SmolLM2-like) × rank (colour), F16 storage when measured (else F32),
 * RoPE post.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "kq_output_file.h"

enum { WIDTH = 1060, ROW_H = 380, PANEL_W = 430, PANEL_H = 250, LEFT = 70, TOP = 60 };

/* Writes s with XML special characters escaped. */
static void put_escaped(FILE *f, const char *s) {
  for (; *s; s++) {
    switch (*s) {
    case '&': fputs("&amp;", f); break;
    case '<': fputs("&lt;", f); break;
    case '>': fputs("&gt;", f); break;
    case '"': fputs("&quot;", f); break;
    default: fputc(*s, f);
    }
  }
}

/* Decode rows of the rank grid (transform-coded budget rows are not
 * charted: their series would mix with the ranks). */
static bool wanted(const kq_bench_result *r, const char *device, const char *storage) {
  return strcmp(r->op, "decode") == 0 && strcmp(r->device, device) == 0 && r->storage &&
         strcmp(r->storage, storage) == 0 && r->rope && strcmp(r->rope, "post") == 0 &&
         !isfinite(r->bytes_budget);
}

static const char *rank_colour(const kq_bench_result *r) {
  if (r->rank_k == r->head_dim) return "#555555";
  if (2 * r->rank_k == r->head_dim) return "#1f77b4";
  if (4 * r->rank_k == r->head_dim) return "#ff7f0e";
  return "#2ca02c";
}

static const char *rank_label(const kq_bench_result *r) {
  if (r->rank_k == r->head_dim) return "rank d (full)";
  if (2 * r->rank_k == r->head_dim) return "rank d/2";
  if (4 * r->rank_k == r->head_dim) return "rank d/4";
  return "other rank";
}

typedef struct axes {
  double x0, y0;       /* top-left of the plot area */
  double lx_lo, lx_hi; /* log2 context range */
  double y_hi;
} axes;

static double px(const axes *a, double context) {
  double span = a->lx_hi - a->lx_lo;
  double t = span > 0 ? (log2(context) - a->lx_lo) / span : 0.5;
  return a->x0 + 10 + t * (PANEL_W - 20);
}

static double py(const axes *a, double v) {
  return a->y0 + PANEL_H - v / a->y_hi * PANEL_H;
}

static void draw_axes(FILE *f, const axes *a, const char *title, const char *ylabel, double step) {
  fprintf(f, "<rect x='%.1f' y='%.1f' width='%d' height='%d' fill='white' stroke='#999'/>\n", a->x0,
          a->y0, PANEL_W, PANEL_H);
  fprintf(f, "<text x='%.1f' y='%.1f' font-size='14' text-anchor='middle'>%s</text>\n",
          a->x0 + PANEL_W / 2.0, a->y0 - 10, title);
  for (double v = 0; v <= a->y_hi + 1e-9; v += step) {
    double y = py(a, v);
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>\n", a->x0, y,
            a->x0 + PANEL_W, y);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%g</text>\n", a->x0 - 5,
            y + 4, v);
  }
  for (int e = (int)ceil(a->lx_lo - 1e-9); e <= (int)floor(a->lx_hi + 1e-9); e++) {
    double c = ldexp(1.0, e), x = px(a, c);
    char label[32];
    if (c >= 1024)
      snprintf(label, sizeof label, "%gk", c / 1024);
    else
      snprintf(label, sizeof label, "%g", c);
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#999'/>\n", x,
            a->y0 + PANEL_H, x, a->y0 + PANEL_H + 5);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%s</text>\n", x,
            a->y0 + PANEL_H + 18, label);
  }
  fprintf(f,
          "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>context (tokens, log2 "
          "scale)</text>\n",
          a->x0 + PANEL_W / 2.0, a->y0 + PANEL_H + 36);
  fprintf(f,
          "<text transform='translate(%.1f,%.1f) rotate(-90)' font-size='12' "
          "text-anchor='middle'>%s</text>\n",
          a->x0 - 42, a->y0 + PANEL_H / 2.0, ylabel);
}

/* One polyline + markers per (shape, rank) series of device/storage. */
static void draw_series(FILE *f, const kq_bench_report *rep, const axes *a, const char *device,
                        const char *storage, bool speedup) {
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *s = &rep->items[i];
    if (!wanted(s, device, storage)) continue;
    if (speedup && s->rank_k == s->head_dim) continue; /* the baseline is the line at 1 */
    bool first = true;                                 /* start a series at its first point only */
    for (int j = 0; j < i && first; j++) {
      const kq_bench_result *t = &rep->items[j];
      if (wanted(t, device, storage) && t->heads == s->heads && t->head_dim == s->head_dim &&
          t->rank_k == s->rank_k)
        first = false;
    }
    if (!first) continue;
    bool smol = s->head_dim < 128;
    fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2'%s points='", rank_colour(s),
            smol ? " stroke-dasharray='6,4'" : "");
    for (int j = i; j < rep->count; j++) {
      const kq_bench_result *t = &rep->items[j];
      double v = speedup ? t->speedup_vs_full : t->pct_of_ceiling;
      if (wanted(t, device, storage) && t->heads == s->heads && t->head_dim == s->head_dim &&
          t->rank_k == s->rank_k && isfinite(v))
        fprintf(f, "%.1f,%.1f ", px(a, t->context), py(a, fmin(v, a->y_hi)));
    }
    fputs("'/>\n", f);
    for (int j = i; j < rep->count; j++) {
      const kq_bench_result *t = &rep->items[j];
      double v = speedup ? t->speedup_vs_full : t->pct_of_ceiling;
      if (wanted(t, device, storage) && t->heads == s->heads && t->head_dim == s->head_dim &&
          t->rank_k == s->rank_k && isfinite(v))
        fprintf(f, "<circle cx='%.1f' cy='%.1f' r='3.5' fill='%s'/>\n", px(a, t->context),
                py(a, fmin(v, a->y_hi)), rank_colour(t));
    }
  }
}

static void draw_legend(FILE *f, const kq_bench_report *rep, const char *device,
                        const char *storage, double x, double y) {
  /* Ranks present (by colour) and shapes present (by dash). */
  const char *seen[8];
  int n_seen = 0;
  for (int i = 0; i < rep->count && n_seen < 8; i++) {
    const kq_bench_result *r = &rep->items[i];
    if (!wanted(r, device, storage)) continue;
    const char *label = rank_label(r);
    bool dup = false;
    for (int k = 0; k < n_seen; k++) dup = dup || strcmp(seen[k], label) == 0;
    if (dup) continue;
    seen[n_seen++] = label;
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='3'/>\n", x,
            y, x + 24, y, rank_colour(r));
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='12'>%s</text>\n", x + 30, y + 4, label);
    x += 130;
  }
  bool llama = false, smol = false; /* shapes present, by dash */
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *r = &rep->items[i];
    if (!wanted(r, device, storage)) continue;
    llama = llama || r->head_dim >= 128;
    smol = smol || r->head_dim < 128;
  }
  if (llama) {
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#000' stroke-width='2'/>"
            "<text x='%.1f' y='%.1f' font-size='12'>H 32, Hk 8, d 128</text>\n",
            x, y, x + 24, y, x + 30, y + 4);
    x += 150;
  }
  if (smol)
    fprintf(f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#000' stroke-width='2' "
            "stroke-dasharray='6,4'/><text x='%.1f' y='%.1f' font-size='12'>H 9, Hk 3, d "
            "64</text>\n",
            x, y, x + 24, y, x + 30, y + 4);
}

static void draw_device(FILE *f, const kq_bench_report *rep, int d, double top) {
  const char *device = rep->devices[d].info.name;
  const char *storage = "f16";
  bool any16 = false;
  for (int i = 0; i < rep->count; i++) any16 = any16 || wanted(&rep->items[i], device, "f16");
  if (!any16) storage = "f32";
  axes sp = {.x0 = LEFT, .y0 = top + TOP, .lx_lo = INFINITY, .lx_hi = -INFINITY, .y_hi = 2.0};
  double pct_hi = 100.0;
  for (int i = 0; i < rep->count; i++) {
    const kq_bench_result *r = &rep->items[i];
    if (!wanted(r, device, storage)) continue;
    sp.lx_lo = fmin(sp.lx_lo, log2(r->context));
    sp.lx_hi = fmax(sp.lx_hi, log2(r->context));
    if (isfinite(r->speedup_vs_full)) sp.y_hi = fmax(sp.y_hi, r->speedup_vs_full);
    if (isfinite(r->pct_of_ceiling)) pct_hi = fmax(pct_hi, r->pct_of_ceiling);
  }
  fprintf(f, "<text x='%d' y='%.1f' font-size='16' font-weight='bold'>", LEFT - 50, top + 24);
  put_escaped(f, device);
  fputs(": ", f);
  put_escaped(f, rep->devices[d].info.description);
  fprintf(f, " (decode, %s, RoPE post; copy ceiling %.1f GB/s)</text>\n", storage,
          rep->devices[d].ceiling_gbps);
  if (!isfinite(sp.lx_lo)) {
    fprintf(f, "<text x='%d' y='%.1f' font-size='13'>no decode results</text>\n", LEFT,
            top + TOP + 20);
    return;
  }
  double step = sp.y_hi <= 4 ? 0.5 : sp.y_hi <= 10 ? 1 : 2;
  sp.y_hi = ceil(sp.y_hi * 1.1 / step) * step;
  axes pc = sp;
  pc.x0 = LEFT + PANEL_W + 90;
  pc.y_hi = ceil(pct_hi / 20.0) * 20.0;
  draw_axes(f, &sp, "speedup over full attention", "speedup (x)", step);
  fprintf(f,
          "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#555' stroke-dasharray='2,3'/>\n",
          sp.x0, py(&sp, 1.0), sp.x0 + PANEL_W, py(&sp, 1.0));
  draw_series(f, rep, &sp, device, storage, true);
  draw_axes(f, &pc, "bandwidth as % of the copy ceiling", "% of ceiling", 20.0);
  draw_series(f, rep, &pc, device, storage, false);
  draw_legend(f, rep, device, storage, LEFT, top + TOP + PANEL_H + 60);
}

bool kq_bench_svg_write(const kq_bench_report *rep, const char *path) {
  kq_output_file out;
  FILE *f = NULL;
  kq_status st = kq_output_open(path, &out);
  if (st == KQ_OK && !(f = kq_output_stream(&out))) st = KQ_ERR_IO;
  if (st != KQ_OK) {
    kq_output_abort(&out);
    fprintf(stderr, "kqsvd bench: --svg: %s\n", kq_last_error());
    return false;
  }
  int rows = rep->n_devices > 0 ? rep->n_devices : 1;
  fprintf(f,
          "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
          "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='#fafafa'/>\n",
          WIDTH, rows * ROW_H + 10);
  if (rep->n_devices == 0)
    fprintf(f, "<text x='20' y='40' font-size='14'>no attention results</text>\n");
  for (int d = 0; d < rep->n_devices; d++) draw_device(f, rep, d, (double)d * ROW_H);
  fputs("</svg>\n", f);
  if (ferror(f)) {
    kq_output_abort(&out);
    fprintf(stderr, "kqsvd bench: --svg: cannot write %s\n", path);
    return false;
  }
  if (kq_output_commit(&out) != KQ_OK) {
    fprintf(stderr, "kqsvd bench: --svg: %s\n", kq_last_error());
    return false;
  }
  return true;
}
