import torch, glob
from omegaconf import OmegaConf
from dasslab.checkpoints import load_diffusion, load_segmenter
from dasslab.analysis.judge import label_consistency
from dasslab.analysis.image_stats import high_frequency_energy as hf
from dasslab.translation import translate_images
from dasslab.data.digits import Digits
torch.set_num_threads(2)
d = load_diffusion(sorted(glob.glob("outputs/cache/diffusion/e7f2b13857e6/checkpoints/*.ckpt"))[-1], setting="x"); s = d.sampler()
judge = load_segmenter(sorted(glob.glob("outputs/cache/judge/dabbd9c270b2/checkpoints/*.ckpt"))[-1], setting="j").model.eval()
guide = load_segmenter(sorted(glob.glob("outputs/cache/source/84ddc5f14a36/checkpoints/*.ckpt"))[-1], setting="g").model.eval().requires_grad_(False)
src = Digits(root="data/digits", size=32, n_train=3000, n_val=600, seed=0, domain="source", split="val")
x = torch.stack([src[i]["image"] for i in range(64)]); y = torch.stack([src[i]["label"] for i in range(64)])
for n in (300, 600):
    for shift in (0.3, 0.6):
        g = {"calibrate": True, "shift": shift, "lcg_input": "whole", "loss_on": "x0"}
        out = torch.cat([tr.images for _, tr in translate_images(s, x, y, n, 10, guide, g, "alternate", batch_size=64, seed=0, variance="posterior")])
        c = label_consistency(judge, out, y, 11, foreground=list(range(1, 11)))
        print(n, shift, round(c["miou_fg"], 1), round(hf(out), 3), flush=True)
