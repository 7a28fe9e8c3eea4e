# The oracle floors of RESULTS.md (issue 16): run benchmarks/temporal_cache.py fp32 box.mp4:100 ... first (clips in /tmp/mo/real).
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from temporal_cache_eval import *
from hatstream.pipeline.temporal import TemporalFilter
for c in CLIPS:
    d = load(c)
    s = score(d["sr"], d)
    hi = lambda x: x - lowpass(x)
    A = score([lowpass(y) + hi(g) for y, g in zip(d["sr"], d["hr"])], d)
    B = score([lowpass(g) + hi(y) for y, g in zip(d["sr"], d["hr"])], d)
    C = score(run_filter(lambda: TemporalFilter(2, 255), {"sr": d["hr"]}), d)
    # static pixels: reliable and |flow| < 0.1
    st, frac = [], []
    for t in range(1, 40):
        p = d["pairs"][t-1]; m = p.reliable & (np.hypot(p.flow[...,0], p.flow[...,1]) < 0.1)
        m = m[2:-2, 2:-2]; frac.append(m.mean())
        if m.any(): st.append(np.abs(d["hr"][t] - d["hr"][t-1])[2:-2, 2:-2][m].mean())
    rel = np.mean([p.reliable.mean() for p in d["pairs"]])
    print(f"{c:6s} per {s[1]:.3f} | perfect-detail {A[1]:.3f} ({100*(A[1]/s[1]-1):+.0f}%) perfect-low {B[1]:.3f} | "
          f"steadied-GT {C[1]:.3f} ({C[0]:.2f} dB) | static {np.mean(frac)*100:.0f}% noise {np.mean(st) if st else float('nan'):.3f} | reliable {rel*100:.0f}%", flush=True)
