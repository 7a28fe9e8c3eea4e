import sys, time, numpy as np, cv2
from hatstream.metrics.flicker import FlowPair, error_flicker, warp
from hatstream.metrics.quality import psnr
CLIPS = {"box": "box.mp4.100", "vtest": "vtest.avi.100", "mega": "Megamind.avi.60", "cup": "cup.mp4.60",
         "bbb": "bigbuckbunny.mp4.40", "bikes": "bikes.mp4.60"}
TUNE = ["box", "vtest", "mega", "cup"]
_cache = {}
def load(c, prec="fp32"):
    k = (c, prec)
    if k not in _cache:
        z = np.load(f"/tmp/mo/cache/{CLIPS[c]}.{prec}.npz")
        d = {n: z[n] for n in z.files}
        d["pairs"] = [FlowPair(f, r) for f, r in zip(d["flow"], d["rel"])]
        _cache[k] = d
    return _cache[k]
def score(ys, d):
    p = float(np.mean([psnr(y, g, 2) for y, g in zip(ys, d["hr"])]))
    f = float(np.nanmean(error_flicker(list(ys), list(d["hr"]), 2, d["pairs"])))
    return p, f
def dwarp(x, d):
    """X_t - W(X_{t-1}) over reliable, cropped, per pair."""
    return [(np.asarray(x[t], np.float64) - warp(x[t - 1], d["pairs"][t - 1]))[2:-2, 2:-2][d["pairs"][t - 1].reliable[2:-2, 2:-2]]
            for t in range(1, len(x))]
def lowpass(img, s=2):
    h, w = img.shape
    small = cv2.resize(img.astype(np.float32), (w // s, h // s), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
def run_filter(make, d, frames=None):
    f = make()
    return [f([y])[0] for y in d["sr"]]
