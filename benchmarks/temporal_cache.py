"""Cache HR Y, bicubic Y, model Y (per precision) and GT flow pairs for each clip."""
import sys, time, numpy as np
from pathlib import Path
from hatstream.commands.eval_video import read_clip
from hatstream.metrics.flicker import flow_pair
from hatstream.metrics.quality import rgb_to_y
from hatstream.train.evaluate import bicubic_upscale, degrade, model_upscale
from hatstream.inference import load_model
prec = sys.argv[1]
clips = [a.split(":") for a in sys.argv[2:]]
model = load_model("hat-tiny-x2", device="cpu", precision=prec)
print(model.info.name, model.dtype, flush=True)
for name, start in clips:
    out = Path(f"/tmp/mo/cache/{name}.{start}.{prec}.npz")
    if out.exists(): continue
    t0 = time.time()
    frames = read_clip(Path("/tmp/mo/real") / name, int(start), 40)
    hr, bic, sr, lrs = [], [], [], []
    for rgb in frames:
        h, lr = degrade(rgb, 2)
        hr.append(rgb_to_y(h)); bic.append(rgb_to_y(bicubic_upscale(lr, 2)))
        sr.append(rgb_to_y(model_upscale(model, lr)))
    pairs = [flow_pair(hr[t], hr[t - 1]) for t in range(1, len(hr))]
    np.savez_compressed(out, hr=np.array(hr, np.float32), bic=np.array(bic, np.float32), sr=np.array(sr, np.float32),
                        flow=np.array([p.flow for p in pairs]), rel=np.array([p.reliable for p in pairs]))
    print(name, start, len(frames), f"{time.time()-t0:.0f}s", flush=True)
