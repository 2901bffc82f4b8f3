#!/usr/bin/env python3
"""Writes the terrain UNet's oracle fixtures: onnxruntime's output for a few fixed inputs.

Usage (a venv with `pip install onnxruntime numpy safetensors`):

    python tools/reference/terrain_reference.py [MODEL.onnx] [OUT.safetensors]

MODEL defaults to $HAAGENTI_MODELS (or ~/.cache/haagenti-adaptive/models) /
terrain_consistency_unet_difficulty100.onnx, as `cargo xtask fetch-model terrain` stores it; OUT to
crates/haagenti-adaptive-nn/tests/fixtures/terrain_reference.safetensors.

The fixture holds six 128x128 height maps, sigma in {80, 2, 0.02} times difficulty in {0, 1}:
`noisy` [6,1,128,128], `sigma` [6], `difficulty` [6] and onnxruntime's `denoised` [6,1,128,128],
all f32 (about 0.8 MB). The noisy inputs are a smooth field (the size of terrain features) plus
sigma times Gaussian noise from a fixed numpy seed.
"""
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]


def default_model() -> Path:
    base = os.environ.get("HAAGENTI_MODELS") or os.path.expanduser("~/.cache/haagenti-adaptive/models")
    return Path(base) / "terrain_consistency_unet_difficulty100.onnx"


def inputs(seed: int = 12):
    rng = np.random.default_rng(seed)
    sigmas = np.array([80.0, 80.0, 2.0, 2.0, 0.02, 0.02], dtype=np.float32)
    difficulty = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    yy, xx = np.meshgrid(np.linspace(0, 1, 128), np.linspace(0, 1, 128), indexing="ij")
    clean = []
    for _ in sigmas:
        f = np.zeros((128, 128))
        for k in range(1, 6):
            a, b, p, q = rng.normal(size=4)
            f += (a * np.sin(2 * np.pi * k * xx + p) + b * np.cos(2 * np.pi * k * yy + q)) / k
        clean.append(0.5 * f / np.abs(f).max())
    clean = np.stack(clean)[:, None].astype(np.float32)
    noisy = clean + sigmas[:, None, None, None] * rng.normal(size=clean.shape).astype(np.float32)
    return noisy.astype(np.float32), sigmas, difficulty


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model()
    out = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else ROOT / "crates/haagenti-adaptive-nn/tests/fixtures/terrain_reference.safetensors"
    )
    noisy, sigma, difficulty = inputs()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (denoised,) = session.run(None, {"noisy": noisy, "sigma": sigma, "difficulty": difficulty})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "noisy": noisy,
            "sigma": sigma,
            "difficulty": difficulty,
            "denoised": denoised.astype(np.float32),
        },
        str(out),
    )
    for s, d, y in zip(sigma, difficulty, denoised):
        print(f"sigma {s:g} difficulty {d:g}: denoised mean {y.mean():+.4f} std {y.std():.4f}")
    print(f"wrote {out} ({out.stat().st_size} bytes) with onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
