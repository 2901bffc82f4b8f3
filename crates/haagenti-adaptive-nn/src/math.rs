//! Elementwise f32 functions of the layers: an `exp` that vectorizes (Cephes' `expf` polynomial
//! with range reduction), and softmax and SiLU over slices built on it.
//!
//! The SIMD level follows the kernels' [`kernel_path`]: AVX2 + FMA on the x86_64 paths, else
//! (and under `HAAGENTI_FORCE_SCALAR=1`) the scalar code, the same polynomial one value at a
//! time. Results are within [`EXP_MAX_REL_ERROR`] of `f32::exp` wherever that is a normal
//! number; below `ln(f32::MIN_POSITIVE)` they are flushed to zero.

use haagenti_adaptive_kernels::kernel_path;

/// Largest relative error of [`exp`] (and of the AVX2 code) against `f32::exp` on
/// `[EXP_LO, EXP_HI]`, as the tests measure it over every 97th f32 of that range (measured:
/// 8.1e-8 scalar, 1.2e-7 AVX2).
pub const EXP_MAX_REL_ERROR: f32 = 2e-7;

/// `ln(f32::MAX)`: above it `exp` is infinite.
const EXP_HI: f32 = 88.722_83;
/// `ln(f32::MIN_POSITIVE)`: below it `exp` is subnormal, returned as 0.
const EXP_LO: f32 = -87.336_54;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cephes): `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` coefficients of `(exp(r) - 1 - r) / r²` on `|r| <= ln 2 / 2`, highest first.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32.
    0.5,
];

/// `e^x` by range reduction (`x = n ln 2 + r`) and a degree-7 polynomial in `r`: within
/// [`EXP_MAX_REL_ERROR`] of `f32::exp` on normal results, `+inf` above `ln(f32::MAX)`, 0 below
/// `ln(f32::MIN_POSITIVE)`, NaN for NaN.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_nn::math::exp;
///
/// assert!((exp(1.0) - std::f32::consts::E).abs() < 1e-6);
/// assert_eq!(exp(f32::NEG_INFINITY), 0.0);
/// assert_eq!(exp(100.0), f32::INFINITY);
/// ```
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = P.iter().fold(0.0, |acc, &c| acc * r + c);
    let y = p * r * r + r + 1.0;
    // 2^n as two powers (n is in [-126, 128], each half in [-63, 64]), so that neither
    // exponent field leaves the normal range at the ends.
    let n = n as i32;
    let half = n >> 1;
    y * pow2(half) * pow2(n - half)
}

/// `2^n` for `n` in `[-126, 127]`, from its exponent bits.
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// `x * sigmoid(x)` with [`exp`].
pub(crate) fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Softmax of one row in place, the maximum subtracted first.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = avx2::Token::new() {
        avx2::softmax(t, row);
        return;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// SiLU of every value in place.
pub(crate) fn silu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = avx2::Token::new() {
        avx2::silu(t, xs);
        return;
    }
    xs.iter_mut().for_each(|v| *v = silu_scalar(*v));
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P, exp, kernel_path};

    /// Proof that AVX2 and FMA may run: the kernels chose an x86 SIMD path (so not forced
    /// scalar) and the CPU reports both features.
    #[derive(Clone, Copy)]
    pub(super) struct Token(());

    impl Token {
        pub(super) fn new() -> Option<Self> {
            (kernel_path().is_x86_simd()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma"))
            .then_some(Self(()))
        }
    }

    /// Eight lanes of [`exp`](super::exp), the same steps with FMA.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let hi = _mm256_set1_ps(EXP_HI);
        let lo = _mm256_set1_ps(EXP_LO);
        // max/min return their second operand for NaN lanes; those are restored at the end.
        let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let n = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32::<1>(n);
        let bias = _mm256_set1_epi32(127);
        let p0 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias)));
        let rest = _mm256_sub_epi32(n, half);
        let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(rest, bias)));
        let y = _mm256_mul_ps(_mm256_mul_ps(y, p0), p1);
        let y = _mm256_blendv_ps(
            y,
            _mm256_set1_ps(f32::INFINITY),
            _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
        );
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }

    /// Eight values' exp, for the tests.
    #[cfg(test)]
    pub(super) fn exp_lanes(_: Token, x: [f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: the token proves AVX2 and FMA; loads and stores are unaligned on arrays of 8.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    pub(super) fn softmax(t: Token, row: &mut [f32]) {
        // SAFETY: the token proves AVX2 and FMA.
        unsafe { softmax_avx2(t, row) }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_avx2(_: Token, row: &mut [f32]) {
        let (chunks, tail) = row.as_chunks_mut::<8>();
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in chunks.iter() {
            // SAFETY: `c` is 8 f32s.
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes
            .iter()
            .chain(tail.iter())
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let vmax = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        for c in chunks.iter_mut() {
            // SAFETY: `c` is 8 f32s; AVX2 and FMA as the caller guarantees.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vmax));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        // SAFETY: `lanes` is 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum: f32 = lanes.iter().sum();
        for v in tail.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        let vinv = _mm256_set1_ps(inv);
        for c in chunks.iter_mut() {
            // SAFETY: `c` is 8 f32s.
            unsafe {
                _mm256_storeu_ps(
                    c.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vinv),
                );
            }
        }
        tail.iter_mut().for_each(|v| *v *= inv);
    }

    pub(super) fn silu(t: Token, xs: &mut [f32]) {
        // SAFETY: the token proves AVX2 and FMA.
        unsafe { silu_avx2(t, xs) }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu_avx2(_: Token, xs: &mut [f32]) {
        let (chunks, tail) = xs.as_chunks_mut::<8>();
        let one = _mm256_set1_ps(1.0);
        for c in chunks.iter_mut() {
            // SAFETY: `c` is 8 f32s; AVX2 and FMA as the caller guarantees.
            unsafe {
                let x = _mm256_loadu_ps(c.as_ptr());
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(x, _mm256_add_ps(one, e)));
            }
        }
        tail.iter_mut().for_each(|v| *v = super::silu_scalar(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th f32 bit pattern with a value in `[lo, hi]`.
    fn samples(lo: f32, hi: f32, step: usize) -> Vec<f32> {
        let neg = (0..=lo.abs().to_bits())
            .rev()
            .step_by(step)
            .map(|b| -f32::from_bits(b));
        let pos = (0..=hi.to_bits()).step_by(step).map(f32::from_bits);
        neg.chain(pos).filter(|v| (lo..=hi).contains(v)).collect()
    }

    fn rel(got: f32, x: f32) -> f32 {
        let want = (x as f64).exp();
        ((got as f64 - want) / want).abs() as f32
    }

    #[test]
    fn exp_is_within_its_bound_of_f32_exp_over_the_normal_range() {
        let xs = samples(EXP_LO, EXP_HI, 97);
        let worst = xs.iter().map(|&x| rel(exp(x), x)).fold(0.0, f32::max);
        eprintln!(
            "scalar exp: max relative error {worst:e} over {} values",
            xs.len()
        );
        assert!(worst <= EXP_MAX_REL_ERROR, "{worst}");
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = avx2::Token::new() {
            let mut worst = 0f32;
            for c in xs.chunks(8) {
                let mut lanes = [0f32; 8];
                lanes[..c.len()].copy_from_slice(c);
                let got = avx2::exp_lanes(t, lanes);
                for (g, &x) in got.iter().zip(c) {
                    worst = worst.max(rel(*g, x));
                }
            }
            eprintln!("avx2 exp: max relative error {worst:e}");
            assert!(worst <= EXP_MAX_REL_ERROR, "{worst}");
        }
    }

    #[test]
    fn exp_handles_infinities_nan_and_the_ends_of_the_range() {
        let special = [
            f32::NEG_INFINITY,
            -1e30,
            -104.0,
            EXP_LO - 0.01,
            EXP_HI + 0.01,
            100.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let want = [
            0.0,
            0.0,
            0.0,
            0.0,
            f32::INFINITY,
            f32::INFINITY,
            f32::INFINITY,
        ];
        for (x, w) in special.iter().zip(want) {
            assert_eq!(exp(*x), w, "exp({x})");
        }
        assert!(exp(f32::NAN).is_nan());
        // The largest finite results: 2^128 ends would overflow one exponent field.
        assert!(exp(EXP_HI).is_finite() && rel(exp(EXP_HI), EXP_HI) <= EXP_MAX_REL_ERROR);
        assert!(rel(exp(EXP_LO), EXP_LO) <= EXP_MAX_REL_ERROR);
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = avx2::Token::new() {
            let got = avx2::exp_lanes(t, special);
            for (g, w) in got.iter().zip(want) {
                assert_eq!(*g, w);
            }
            assert!(got[7].is_nan());
            let ends = avx2::exp_lanes(t, [EXP_HI, EXP_LO, 0.0, -0.0, 1.0, -1.0, 88.0, -87.0]);
            assert!(ends[0].is_finite() && rel(ends[0], EXP_HI) <= EXP_MAX_REL_ERROR);
            assert_eq!(&ends[2..4], &[1.0, 1.0]);
        }
    }

    #[test]
    fn softmax_and_silu_match_their_definitions() {
        // 37 values: four vectors of 8 and a tail, on either path.
        let x: Vec<f32> = (0..37).map(|i| ((i as f32) * 0.77).sin() * 30.0).collect();
        let mut s = x.clone();
        softmax_in_place(&mut s);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
        for (g, v) in s.iter().zip(&x) {
            let want = ((v - max) as f64).exp() / total;
            assert!(
                (*g as f64 - want).abs() <= 1e-6 * want + 1e-12,
                "{g} {want}"
            );
        }
        let mut y = x.clone();
        y.extend([-1e30, 200.0, -200.0, f32::INFINITY]);
        let mut got = y.clone();
        silu_in_place(&mut got);
        for (g, v) in got.iter().zip(&y) {
            let want = (*v as f64) / (1.0 + (-*v as f64).exp());
            // (Below -87 the true value underflows f32: 1e-30 absolute.)
            let ok = *g as f64 == want || (*g as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30;
            assert!(ok, "silu({v}) = {g}, want {want}");
        }
    }
}
