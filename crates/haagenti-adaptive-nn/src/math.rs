//! Elementwise f32 functions of the layers: an `exp` that vectorizes (Cephes' `expf` polynomial
//! with range reduction), and softmax and SiLU over slices built on it.
//!
//! The SIMD level follows the kernels' [`kernel_path`]: AVX-512F on its AVX-512 paths, AVX2 +
//! FMA on the other x86_64 paths, else (and under `HAAGENTI_FORCE_SCALAR=1`) the scalar code,
//! the same polynomial one value at a time. Results are within [`EXP_MAX_REL_ERROR`] of `f32::exp` wherever that is a normal
//! number; below `ln(f32::MIN_POSITIVE)` they are flushed to zero.

use haagenti_adaptive_kernels::kernel_path;

/// Largest relative error of [`exp`] (and of the AVX2 and AVX-512 code) against `f32::exp` on
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
    if let Some(t) = avx512::Token::new() {
        avx512::softmax(t, row);
        return;
    }
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
    if let Some(t) = avx512::Token::new() {
        avx512::silu(t, xs);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = avx2::Token::new() {
        avx2::silu(t, xs);
        return;
    }
    xs.iter_mut().for_each(|v| *v = silu_scalar(*v));
}

/// The steps of [`exp`] on one SIMD vector, written once for every width: a module passes its
/// vector intrinsics by name and the few steps that differ as `|args| expression` (substituted
/// in place, not closures): `round` to the nearest integer, `half` (`n >> 1` on integer lanes),
/// `pow2` (`2^e` from integer lanes) and `fix`, which restores the lanes the clamped polynomial
/// gets wrong (infinite above `EXP_HI`, 0 below `EXP_LO`, NaN for NaN). Only valid inside a
/// function with the target features those intrinsics need.
#[cfg(target_arch = "x86_64")]
macro_rules! exp_vector {
    (
        $x:expr;
        set1 = $set1:ident,
        min = $min:ident,
        max = $max:ident,
        round = |$rv:ident| $round:expr,
        mul = $mul:ident,
        add = $add:ident,
        fmadd = $fmadd:ident,
        fnmadd = $fnmadd:ident,
        to_int = $to_int:ident,
        half = |$hn:ident| $half:expr,
        sub_int = $sub_int:ident,
        pow2 = |$pe:ident| $pow2:expr,
        fix = |$fy:ident, $fx:ident, $fhi:ident, $flo:ident| $fix:expr
    ) => {{
        let x = $x;
        let hi = $set1(EXP_HI);
        let lo = $set1(EXP_LO);
        // max/min return their second operand for NaN lanes; `fix` restores those.
        let xc = $min($max(x, lo), hi);
        let n = {
            let $rv = $mul(xc, $set1(LOG2E));
            $round
        };
        let r = $fnmadd(n, $set1(LN2_HI), xc);
        let r = $fnmadd(n, $set1(LN2_LO), r);
        let mut p = $set1(P[0]);
        for &c in &P[1..] {
            p = $fmadd(p, r, $set1(c));
        }
        let y = $fmadd($mul(p, r), r, $add(r, $set1(1.0)));
        // 2^n as two powers, as the scalar code does.
        let n = $to_int(n);
        let half = {
            let $hn = n;
            $half
        };
        let p0 = {
            let $pe = half;
            $pow2
        };
        let p1 = {
            let $pe = $sub_int(n, half);
            $pow2
        };
        let y = $mul($mul(y, p0), p1);
        let ($fy, $fx, $fhi, $flo) = (y, x, hi, lo);
        $fix
    }};
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
        exp_vector!(
            x;
            set1 = _mm256_set1_ps,
            min = _mm256_min_ps,
            max = _mm256_max_ps,
            round = |v| _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
            mul = _mm256_mul_ps,
            add = _mm256_add_ps,
            fmadd = _mm256_fmadd_ps,
            fnmadd = _mm256_fnmadd_ps,
            to_int = _mm256_cvtps_epi32,
            half = |n| _mm256_srai_epi32::<1>(n),
            sub_int = _mm256_sub_epi32,
            pow2 = |e| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                e,
                _mm256_set1_epi32(127)
            ))),
            fix = |y, x, hi, lo| {
                let y = _mm256_blendv_ps(
                    y,
                    _mm256_set1_ps(f32::INFINITY),
                    _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
                );
                let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
                _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
            }
        )
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

/// The AVX-512 forms of [`avx2`]'s functions: sixteen lanes, the same steps (the exp is the
/// same polynomial with FMA), for the kernels' AVX-512 paths. SiLU and softmax were a third of
/// a group norm's and a tenth of an attention block's time on eight lanes.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P, kernel_path};

    /// Proof that AVX-512F may run: the kernels chose an AVX-512 path (so neither forced
    /// scalar nor capped below it) and the CPU reports the feature.
    #[derive(Clone, Copy)]
    pub(super) struct Token(());

    impl Token {
        pub(super) fn new() -> Option<Self> {
            (kernel_path().is_avx512() && is_x86_feature_detected!("avx512f")).then_some(Self(()))
        }
    }

    /// Sixteen lanes of [`exp`](super::exp).
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        exp_vector!(
            x;
            set1 = _mm512_set1_ps,
            min = _mm512_min_ps,
            max = _mm512_max_ps,
            round = |v| _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
            mul = _mm512_mul_ps,
            add = _mm512_add_ps,
            fmadd = _mm512_fmadd_ps,
            fnmadd = _mm512_fnmadd_ps,
            to_int = _mm512_cvtps_epi32,
            half = |n| _mm512_srai_epi32::<1>(n),
            sub_int = _mm512_sub_epi32,
            pow2 = |e| _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                e,
                _mm512_set1_epi32(127)
            ))),
            fix = |y, x, hi, lo| {
                let y = _mm512_mask_mov_ps(
                    y,
                    _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi),
                    _mm512_set1_ps(f32::INFINITY),
                );
                let y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), _mm512_setzero_ps());
                _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), x)
            }
        )
    }

    /// Sixteen values' exp, for the tests.
    #[cfg(test)]
    pub(super) fn exp_lanes(_: Token, x: [f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: the token proves AVX-512F; loads and stores are unaligned on arrays of 16.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// The lanes of the 16 values from `at` on that lie inside a slice of `len`.
    fn lanes(at: usize, len: usize) -> __mmask16 {
        let n = (len - at).min(16);
        (((1u32 << n) - 1) & 0xffff) as __mmask16
    }

    pub(super) fn softmax(t: Token, row: &mut [f32]) {
        // SAFETY: the token proves AVX-512F.
        unsafe { softmax_avx512(t, row) }
    }

    /// Every pass reads 16 values at a time, the last ones through a mask (lanes past the end
    /// are never loaded or stored), so there is no scalar tail.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_avx512(_: Token, row: &mut [f32]) {
        let len = row.len();
        let ptr = row.as_mut_ptr();
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = neg_inf;
        for at in (0..len).step_by(16) {
            // SAFETY: the mask keeps the load inside `row` (lanes `at..len` at most).
            m = _mm512_max_ps(m, unsafe {
                _mm512_mask_loadu_ps(neg_inf, lanes(at, len), ptr.add(at))
            });
        }
        let vmax = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut acc = _mm512_setzero_ps();
        for at in (0..len).step_by(16) {
            let k = lanes(at, len);
            // SAFETY: masked to `row` as above; masked-off lanes load -inf, whose exp is 0.
            unsafe {
                let e = exp16(_mm512_sub_ps(
                    _mm512_mask_loadu_ps(neg_inf, k, ptr.add(at)),
                    vmax,
                ));
                _mm512_mask_storeu_ps(ptr.add(at), k, e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(acc));
        for at in (0..len).step_by(16) {
            let k = lanes(at, len);
            // SAFETY: masked to `row` as above.
            unsafe {
                let v = _mm512_maskz_loadu_ps(k, ptr.add(at));
                _mm512_mask_storeu_ps(ptr.add(at), k, _mm512_mul_ps(v, inv));
            }
        }
    }

    pub(super) fn silu(t: Token, xs: &mut [f32]) {
        // SAFETY: the token proves AVX-512F.
        unsafe { silu_avx512(t, xs) }
    }

    /// 16 values at a time, the last ones through a mask.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn silu_avx512(_: Token, xs: &mut [f32]) {
        let len = xs.len();
        let ptr = xs.as_mut_ptr();
        let one = _mm512_set1_ps(1.0);
        for at in (0..len).step_by(16) {
            let k = lanes(at, len);
            // SAFETY: the mask keeps the load and the store inside `xs`; AVX-512F as the
            // caller guarantees.
            unsafe {
                let x = _mm512_maskz_loadu_ps(k, ptr.add(at));
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
                _mm512_mask_storeu_ps(ptr.add(at), k, _mm512_div_ps(x, _mm512_add_ps(one, e)));
            }
        }
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
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = avx512::Token::new() {
            let mut worst = 0f32;
            for c in xs.chunks(16) {
                let mut lanes = [0f32; 16];
                lanes[..c.len()].copy_from_slice(c);
                let got = avx512::exp_lanes(t, lanes);
                for (g, &x) in got.iter().zip(c) {
                    worst = worst.max(rel(*g, x));
                }
            }
            eprintln!("avx512 exp: max relative error {worst:e}");
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
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = avx512::Token::new() {
            let mut lanes = [1.0f32; 16];
            lanes[..8].copy_from_slice(&special);
            lanes[8..12].copy_from_slice(&[EXP_HI, EXP_LO, 0.0, -0.0]);
            let got = avx512::exp_lanes(t, lanes);
            for (g, w) in got.iter().zip(want) {
                assert_eq!(*g, w);
            }
            assert!(got[7].is_nan());
            assert!(got[8].is_finite() && rel(got[8], EXP_HI) <= EXP_MAX_REL_ERROR);
            assert!(rel(got[9], EXP_LO) <= EXP_MAX_REL_ERROR);
            assert_eq!(&got[10..12], &[1.0, 1.0]);
            assert!(rel(got[12], 1.0) <= EXP_MAX_REL_ERROR);
        }
    }

    #[test]
    fn softmax_and_silu_match_their_definitions() {
        // 37 values: two vectors of 16 (four of 8) and a tail, on any path.
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
