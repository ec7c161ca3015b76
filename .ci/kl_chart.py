"""Draws KL(p_full || p_compressed) against the KV cache's bytes (fraction of a full F16
cache) for each method, from `kqsvd ppl --json` outputs, as a hand-written SVG (no plotting
library), and prints the runs as a markdown table.

usage: kl_chart.py PPL.json... [--label PROJ=NAME]... -o OUT.svg

A run's series is its --label name, else its method and layout from the JSON ("kq-svd",
"kq-svd joint", "quant", ...). KL is drawn on a log scale.
"""
import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
W, H = 820, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 260, 50, 60


def series_name(run, labels):
    if run["proj"] in labels:
        return labels[run["proj"]]
    return run["method"] + (" joint" if run.get("layout") == "joint" else "")


def parse(argv):
    files, labels, out = [], {}, None
    i = 0
    while i < len(argv):
        if argv[i] == "--label" and i + 1 < len(argv):
            proj, _, name = argv[i + 1].partition("=")
            labels[proj] = name
            i += 2
        elif argv[i] == "-o" and i + 1 < len(argv):
            out = argv[i + 1]
            i += 2
        else:
            files.append(argv[i])
            i += 1
    if not files or not out:
        sys.exit(__doc__)
    return files, labels, out


def main(argv):
    files, labels, out = parse(argv)
    series, head = {}, None
    for path in files:
        with open(path) as f:
            r = json.load(f)
        head = head or r
        for run in r["runs"]:
            series.setdefault(series_name(run, labels), []).append(run)
    points = [(run["kv_fraction_f16"], run["kld"]) for runs in series.values() for run in runs
              if run["kld"] is not None and run["kld"] > 0]
    if not points:
        sys.exit("kl_chart.py: no run with a KL (runs made with --skip-full?)")
    x_lo = math.floor(min(p[0] for p in points) * 10) / 10
    x_hi = math.ceil(max(p[0] for p in points) * 10) / 10
    if x_hi <= x_lo:
        x_hi = x_lo + 0.1
    y_lo = math.floor(math.log10(min(p[1] for p in points)))
    y_hi = math.ceil(math.log10(max(p[1] for p in points)))
    if y_hi <= y_lo:
        y_hi = y_lo + 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y):
        return TOP + ph - (math.log10(y) - y_lo) / (y_hi - y_lo) * ph

    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
         'font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>']
    title = "SmolLM2-135M: KL(full || compressed) vs KV bytes (%d tokens of %s, windows of %d, %s)" % (
        head["tokens"], head["text"].rsplit("/", 1)[-1], head["ctx"], head["storage"])
    s.append('<text x="%d" y="24" font-size="14">%s</text>' % (LEFT, escape(title)))
    for k in range(int(round((x_hi - x_lo) * 20)) + 1):
        x = x_lo + k * 0.05
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (px(x), TOP, px(x), TOP + ph))
        if k % 2 == 0:
            s.append('<text x="%.1f" y="%d" text-anchor="middle">%.2f</text>' % (px(x), TOP + ph + 18, x))
    for e in range(y_lo, y_hi + 1):
        for m in range(1, 10):
            y = m * 10.0 ** e
            if e == y_hi and m > 1:
                break
            s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>' % (
                LEFT, py(y), LEFT + pw, py(y), "#bbb" if m == 1 else "#eee"))
        s.append('<text x="%d" y="%.1f" text-anchor="end">1e%d</text>' % (LEFT - 6, py(10.0 ** e) + 4, e))
    s.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>' % (LEFT, TOP, pw, ph))
    s.append('<text x="%.1f" y="%d" text-anchor="middle">KV cache bytes per token / full F16 cache\'s'
             '</text>' % (LEFT + pw / 2, H - 16))
    s.append('<text transform="translate(18,%.1f) rotate(-90)" text-anchor="middle">'
             'mean KL divergence, nats (log scale)</text>' % (TOP + ph / 2))
    for i, (name, runs) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        pts = sorted((r["kv_fraction_f16"], r["kld"]) for r in runs if r["kld"] is not None and r["kld"] > 0)
        if len(pts) > 1:
            s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
                c, " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in pts)))
        for x, y in pts:
            s.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (px(x), py(y), c))
        ly = TOP + 10 + 20 * i
        s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (
            LEFT + pw + 14, ly, LEFT + pw + 38, ly, c))
        s.append('<text x="%d" y="%d">%s</text>' % (LEFT + pw + 44, ly + 4, escape(name)))
    s.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(s) + "\n")

    print("| method | of F16 | ppl | KL | top-1 |")
    print("|---|---:|---:|---:|---:|")
    full = head.get("full")
    if full:
        print("| full (%s) | %.3f | %.2f | 0 | 1 |" % (head["storage"], full["kv_fraction_f16"], full["ppl"]))
    for name, runs in series.items():
        for r in sorted(runs, key=lambda r: r["kv_fraction_f16"]):
            kld = "-" if r["kld"] is None else "%.4f" % r["kld"]
            top1 = "-" if r["top1"] is None else "%.3f" % r["top1"]
            print("| %s | %.3f | %.2f | %s | %s |" % (name, r["kv_fraction_f16"], r["ppl"], kld, top1))


if __name__ == "__main__":
    main(sys.argv[1:])
