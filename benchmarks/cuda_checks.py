"""CUDA checks that need neither pytest nor OpenSlide: GPU JPEG decode against the CPU decode,
bf16 embedding against fp32 features, SimSiam on CUDA with a resume. Exits non-zero on a
failed check.

    PYTHONPATH=src python benchmarks/cuda_checks.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_loader import toy_pixels, write_store  # noqa: E402

from csmil.encoders.embedding import embed_scale  # noqa: E402
from csmil.encoders.loader import store_batches  # noqa: E402
from csmil.encoders.simsiam import build_backbone, load_encoder, save_encoder  # noqa: E402
from csmil.encoders.training import SimSiamSettings, resume_path, train_simsiam  # noqa: E402
from csmil.slides.patchstore import open_patch_store  # noqa: E402


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = torch.device("cuda")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        store = write_store(d / "s.h5", toy_pixels(96, 64), 4)
        with open_patch_store(store) as st:
            cpu = torch.cat(list(store_batches(st, "20x", 32, dev, 2, "cpu")))
            gpu = torch.cat(list(store_batches(st, "20x", 32, dev, 2, "cuda")))
        err = (gpu.float() - cpu.float()).abs().mean().item()
        results.append(check("nvJPEG decode vs CPU decode", gpu.shape == cpu.shape and err < 1.5,
                             f"mean abs diff {err:.3f} of 255"))  # fmt: skip
        net, dim = build_backbone("resnet18")
        save_encoder(d / "e.pt", net, "resnet18", "20x", 64, dim, {})
        with open_patch_store(store) as st:
            net_c, meta = load_encoder(d / "e.pt", "cuda")
            f_gpu = embed_scale(st, "20x", net_c, meta, 32, dev, "check", 2, "cpu")
            net_0, meta = load_encoder(d / "e.pt", "cpu")
            f_cpu = embed_scale(st, "20x", net_0, meta, 32, torch.device("cpu"), "check")
        cos = np.sum(f_gpu * f_cpu, 1) / (
            np.linalg.norm(f_gpu, axis=1) * np.linalg.norm(f_cpu, axis=1)
        )
        results.append(check("bf16 CUDA features vs fp32 CPU", f_gpu.dtype == np.float32
                             and cos.min() > 0.99, f"min cosine {cos.min():.4f}"))  # fmt: skip
        s = SimSiamSettings(epochs=2, batch_size=32, warmup_epochs=0, schedule_epochs=None)
        out = d / "enc.pt"
        r = train_simsiam([store], "20x", out, s, device="cuda", num_threads=2)
        ok = np.isfinite(r["final_loss"]) and out.exists() and not resume_path(out).exists()
        results.append(check("SimSiam on CUDA", ok, f"loss {r['final_loss']:.4f}"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
