"""Independent reference values for tests/noise.rs (float64, numpy).

Each function restates the published formula the way its source computes it:
- Karras/EDM: k-diffusion `get_sigmas_karras` (linspace ramp, then append 0).
- DDPM betas and timestep spacings: diffusers `EulerDiscreteScheduler.__init__` / `set_timesteps`
  (`betas_for_alpha_bar` for the cosine schedule), in float64 where diffusers uses float32.
- Flow matching: equal steps t = linspace(1, 1/n, n) (diffusers' Flux pipeline), SD3 shift and Flux
  `time_shift`, then append 0.
- Custom lists: Align Your Steps' `loglinear_interp`.

Run: python3 noise_reference.py   (needs numpy; the Rust tests do not run it, the output is pasted)
"""
import math

import numpy as np


def karras(n, smin=0.002, smax=80.0, rho=7.0):
    ramp = np.linspace(0, 1, n)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    return list((hi + ramp * (lo - hi)) ** rho) + [0.0]


def betas(kind, T=1000, b0=0.00085, b1=0.012):
    if kind == "linear":
        return np.linspace(b0, b1, T)
    if kind == "scaled_linear":
        return np.linspace(b0 ** 0.5, b1 ** 0.5, T) ** 2
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def ddpm(kind, n, spacing, T=1000, offset=1, **kw):
    ab = np.cumprod(1.0 - betas(kind, T, **kw))
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n)[::-1].copy()
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy() + offset
    else:
        ts = np.arange(T, 0, -T / n).round().copy() - 1
    s = ((1 - ab) / ab) ** 0.5
    return list(np.interp(ts, np.arange(0, T), s)) + [0.0]


def flow(n, shift=None, mu=None):
    t = np.linspace(1.0, 1.0 / n, n)
    if mu is None:
        s = shift * t / (1 + (shift - 1) * t)
    else:
        s = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return list(s) + [0.0]


def loglinear_interp(t_steps, num_steps):
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(t_steps[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def show(name, xs):
    print(f"const {name}: [f64; {len(xs)}] = [")
    for x in xs:
        print(f"    {float(x)!r},")
    print("];")


show("KARRAS_10", karras(10))
show("KARRAS_2", karras(2))
show("KARRAS_5_CUSTOM", karras(5, 0.03, 14.6, 5.0))
show("SD_LEADING_10", ddpm("scaled_linear", 10, "leading"))
show("SD_TRAILING_10", ddpm("scaled_linear", 10, "trailing"))
show("SD_TRAILING_48", ddpm("scaled_linear", 48, "trailing"))
show("SD_LINSPACE_10", ddpm("scaled_linear", 10, "linspace"))
show("LINEAR_DDPM_5", ddpm("linear", 5, "leading", b0=0.0001, b1=0.02))
show("COSINE_8", ddpm("cosine", 8, "leading"))
show("FLOW_SHIFT3_10", flow(10, shift=3.0))
mu4096 = 0.5 + (4096 - 256) * (1.15 - 0.5) / (4096 - 256)
mu1024 = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)
print("// mu for 1024 tokens:", repr(mu1024))
show("FLUX_4096_8", flow(8, mu=mu4096))
show("FLUX_1024_6", flow(6, mu=mu1024))
ays20 = list(loglinear_interp(AYS_SD15, 21))
ays20[-1] = 0.0
show("AYS_SD15_20", ays20)
ays5 = list(loglinear_interp(AYS_SD15, 6))
ays5[-1] = 0.0
show("AYS_SD15_5", ays5)
# 1-step and 2-step DDPM (diffusers conventions).
show("SD_LINSPACE_1", ddpm("scaled_linear", 1, "linspace"))
show("SD_LEADING_2", ddpm("scaled_linear", 2, "leading"))
