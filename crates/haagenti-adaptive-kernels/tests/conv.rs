//! The convolution API: `conv2d` against the direct convolution `conv2d_scalar`, for every
//! format, stride, padding and kernel size, and its errors on bad input.

use haagenti_adaptive_kernels::{
    Conv2dParams, Conv2dShape, ConvWeight, Format, KernelError, Parallelism, QuantizedTensor,
    conv2d, conv2d_residual, conv2d_scalar,
};
use proptest::prelude::*;

/// A convolution problem, with values in PyTorch's weight order.
#[derive(Clone, Debug)]
struct Problem {
    format: Format,
    batch: usize,
    height: usize,
    width: usize,
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    x: Vec<f32>,
    w_oihw: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Problem {
    fn weight(&self) -> ConvWeight {
        let [kh, kw] = self.kernel;
        ConvWeight::from_oihw(self.format, self.c_out, self.c_in, kh, kw, &self.w_oihw).unwrap()
    }

    fn shape(&self, w: &ConvWeight) -> Conv2dShape {
        Conv2dShape::new(self.batch, self.height, self.width, w, self.params).unwrap()
    }
}

/// The activations as `conv2d` sees them: rounded to Q8_0 over each pixel's 32-channel blocks
/// for block formats (when `c_in` is a multiple of 32), as given otherwise.
fn effective_x(p: &Problem) -> Vec<f32> {
    if p.format.is_block() && !p.x.is_empty() && p.c_in.is_multiple_of(32) {
        let pixels = p.x.len() / p.c_in;
        QuantizedTensor::quantize(Format::Q8_0, pixels, p.c_in, &p.x)
            .unwrap()
            .to_f32()
    } else {
        p.x.clone()
    }
}

/// `conv2d_scalar` of `x` by `weight_values` (`[c_out, kh, kw, c_in]`, as F32) with the shape of
/// `p`: the direct convolution of any values over the same windows and padding.
fn direct(p: &Problem, x: &[f32], weight_values: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [kh, kw] = p.kernel;
    let w = ConvWeight::from_ohwi(Format::F32, p.c_out, p.c_in, kh, kw, weight_values).unwrap();
    let s = p.shape(&w);
    let mut out = vec![0.0; s.output_len()];
    conv2d_scalar(x, &s, &w, bias, &mut out).unwrap();
    out
}

/// Per output, the magnitude f32 rounding is relative to: Σ |x| (|ŵ| + max |ŵ| of the 32-value
/// block), as the matmul tests take it (Q4_1's minimum enters the sums on its own).
fn magnitude(p: &Problem, x: &[f32], wf: &[f32]) -> Vec<f32> {
    let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let row = wf.len() / p.c_out.max(1);
    let bound: Vec<f32> = wf
        .chunks(row.max(1))
        .flat_map(|r| {
            r.chunks(32).flat_map(|b| {
                let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                b.iter().map(move |v| v.abs() + amax)
            })
        })
        .collect();
    let bias = p
        .bias
        .as_ref()
        .map(|b| b.iter().map(|v| v.abs()).collect::<Vec<_>>());
    direct(p, &abs_x, &bound, bias.as_deref())
}

/// Checks `conv2d` on `p` against the oracles, on both parallelism settings:
/// - against `conv2d_scalar` of the activations `conv2d` sees, within f32 rounding;
/// - against `conv2d_scalar` of the given activations, within f32 rounding plus the Q8_0
///   activation error for block formats (at most `max|x| / 254` per activation).
fn check(p: &Problem) -> Result<(), TestCaseError> {
    let w = p.weight();
    let s = p.shape(&w);
    let wf = w.tensor().to_f32();
    let bias = p.bias.as_deref();
    let oracle = {
        let mut out = vec![0.0; s.output_len()];
        conv2d_scalar(&p.x, &s, &w, bias, &mut out).unwrap();
        out
    };
    let seen = direct(p, &effective_x(p), &wf, bias);
    let mag = magnitude(p, &p.x, &wf);
    let x_step = if p.format.is_block() {
        p.x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 254.0
    } else {
        0.0
    };
    let abs_w: Vec<f32> = wf.iter().map(|v| v.abs()).collect();
    let ones = vec![1.0; p.x.len()];
    let q_err = direct(p, &ones, &abs_w, None);
    // Tight comparison only where the blocks of an im2col row are whole pixels' blocks.
    let tight = !p.format.is_block() || p.c_in.is_multiple_of(32);
    for par in [Parallelism::Rayon, Parallelism::None] {
        let mut out = vec![f32::NAN; s.output_len()];
        conv2d(&p.x, &s, &w, bias, &mut out, par).unwrap();
        for i in 0..out.len() {
            let round = 2e-5 * mag[i] + 1e-6;
            if tight {
                prop_assert!(
                    (out[i] - seen[i]).abs() <= round,
                    "{par:?} output {i}: {} vs {} (tol {round})",
                    out[i],
                    seen[i]
                );
            }
            let tol = round + 1.001 * x_step * q_err[i];
            prop_assert!(
                (out[i] - oracle[i]).abs() <= tol,
                "{par:?} output {i}: {} vs oracle {} (tol {tol})",
                out[i],
                oracle[i]
            );
        }
        // With a residual: the same convolution plus the residual, value by value (the
        // residual is added in another order, so up to a rounding or two of the sum).
        let residual: Vec<f32> = (0..out.len())
            .map(|i| (i as f32 * 0.61).sin() * 3.0)
            .collect();
        let mut with = vec![f32::NAN; s.output_len()];
        conv2d_residual(&p.x, &s, &w, bias, Some(&residual), &mut with, par).unwrap();
        for i in 0..out.len() {
            let want = out[i] + residual[i];
            let tol = 4.0 * f32::EPSILON * (mag[i] + residual[i].abs()) + 1e-6;
            prop_assert!(
                (with[i] - want).abs() <= tol,
                "{par:?} output {i} with residual: {} vs {want} (tol {tol})",
                with[i]
            );
        }
    }
    Ok(())
}

const ALL: [Format; 6] = Format::ALL;

/// Odd sizes, stride 1 and 2, padding 0 and 1, 1x1, 3x3 and rectangular kernels, batch 1-2,
/// every format; `c_in` a multiple of 32 for block formats with odd windows, and 8 with a 2x2
/// window (so that blocks span two taps).
fn problem() -> impl Strategy<Value = Problem> {
    let kernels = prop_oneof![
        Just([1, 1]),
        Just([3, 3]),
        Just([3, 3]),
        Just([1, 3]),
        Just([2, 2]),
    ];
    (
        0usize..6,
        kernels,
        1usize..=2,
        0usize..=1,
        1usize..=2,
        3usize..=9,
        3usize..=9,
        1usize..=12,
        0usize..=40,
    )
        .prop_flat_map(
            |(f, kernel, stride, pad, batch, height, width, c_out, c_any)| {
                let format = ALL[f];
                let c_in = if !format.is_block() {
                    c_any.max(1)
                } else if kernel == [2, 2] {
                    8
                } else {
                    32 * (1 + c_any % 2)
                };
                let value = prop_oneof![
                    8 => -1.0f32..1.0,
                    1 => -50.0f32..50.0,
                    1 => Just(0.0f32),
                ];
                let taps = kernel[0] * kernel[1];
                (
                    prop::collection::vec(value.clone(), batch * height * width * c_in),
                    prop::collection::vec(value, c_out * c_in * taps),
                    prop::option::of(prop::collection::vec(-2.0f32..2.0, c_out)),
                )
                    .prop_map(move |(x, w_oihw, bias)| Problem {
                        format,
                        batch,
                        height,
                        width,
                        c_in,
                        c_out,
                        kernel,
                        params: Conv2dParams::new(stride, pad),
                        x,
                        w_oihw,
                        bias,
                    })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_matches_the_direct_convolution(p in problem()) {
        check(&p)?;
    }
}

/// Deterministic values in about [-1, 1].
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
        .map(|v| v / (1u32 << 23) as f32 - 1.0)
        .collect()
}

/// A problem with deterministic values: `dims` is `[batch, height, width, c_in, c_out]`.
fn fixed(format: Format, dims: [usize; 5], kernel: [usize; 2], params: Conv2dParams) -> Problem {
    let [batch, height, width, c_in, c_out] = dims;
    Problem {
        format,
        batch,
        height,
        width,
        c_in,
        c_out,
        kernel,
        params,
        x: values(batch * height * width * c_in, 1),
        w_oihw: values(c_out * c_in * kernel[0] * kernel[1], 2),
        bias: Some(values(c_out, 3)),
    }
}

/// A layer large enough for several im2col tiles per thread, every format.
#[test]
fn a_unet_sized_layer_matches_in_every_format() {
    for format in ALL {
        check(&fixed(
            format,
            [1, 40, 33, 64, 24],
            [3, 3],
            Conv2dParams::new(1, 1),
        ))
        .unwrap();
    }
}

/// A strided layer that skips pixels, and a pointwise one (the input is its own im2col).
#[test]
fn strided_and_pointwise_layers_match() {
    for (kernel, stride, pad) in [([3, 3], 2, 1), ([1, 1], 1, 0), ([1, 1], 2, 0)] {
        for format in [Format::F32, Format::Q4_0] {
            let params = Conv2dParams::new(stride, pad);
            check(&fixed(format, [2, 17, 20, 32, 40], kernel, params)).unwrap();
        }
    }
}

#[test]
fn from_oihw_moves_channels_innermost() {
    // 2 filters, 3 channels, 1x2 taps: value = 100 o + 10 i + tap.
    let (c_out, c_in, kh, kw) = (2, 3, 1, 2);
    let mut oihw = Vec::new();
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..kh * kw {
                oihw.push((100 * o + 10 * i + tap) as f32);
            }
        }
    }
    let w = ConvWeight::from_oihw(Format::F32, c_out, c_in, kh, kw, &oihw).unwrap();
    let mut want = Vec::new();
    for o in 0..c_out {
        for tap in 0..kh * kw {
            for i in 0..c_in {
                want.push((100 * o + 10 * i + tap) as f32);
            }
        }
    }
    assert_eq!(w.tensor().to_f32(), want);
}

#[test]
fn bad_parameters_and_lengths_are_typed_errors() {
    let w = ConvWeight::from_ohwi(Format::F32, 2, 3, 3, 3, &[0.5; 2 * 3 * 9]).unwrap();
    for (h, params) in [(5, Conv2dParams::new(0, 1)), (1, Conv2dParams::new(1, 0))] {
        assert!(matches!(
            Conv2dShape::new(1, h, 5, &w, params),
            Err(KernelError::InvalidConvolution { .. })
        ));
    }
    assert!(matches!(
        ConvWeight::from_oihw(Format::F32, 2, 3, 3, 3, &[0.0; 17]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ConvWeight::from_ohwi(Format::Q8_0, 2, 3, 3, 3, &[0.0; 54]),
        Err(KernelError::RowLengthNotBlockMultiple { .. })
    ));
    assert!(matches!(
        Conv2dShape::new(usize::MAX, 4, 4, &w, Conv2dParams::new(1, 1)),
        Err(KernelError::SizeOverflow { .. })
    ));

    let s = Conv2dShape::new(1, 4, 4, &w, Conv2dParams::new(1, 1)).unwrap();
    let x = vec![0.25; s.input_len()];
    let mut out = vec![0.0; s.output_len()];
    let par = Parallelism::None;
    let mismatch = |r: Result<(), KernelError>, name: &str| {
        assert!(
            matches!(r, Err(KernelError::ShapeMismatch { what, .. }) if what.starts_with(name)),
            "{name}: {r:?}"
        );
    };
    mismatch(conv2d(&x[1..], &s, &w, None, &mut out, par), "x");
    mismatch(conv2d(&x, &s, &w, None, &mut out[1..], par), "out");
    mismatch(conv2d(&x, &s, &w, Some(&[1.0]), &mut out, par), "bias");
    mismatch(
        conv2d_residual(&x, &s, &w, None, Some(&out.clone()[1..]), &mut out, par),
        "residual",
    );
    let other = ConvWeight::from_ohwi(Format::F32, 2, 3, 1, 1, &[0.5; 6]).unwrap();
    mismatch(conv2d(&x, &s, &other, None, &mut out, par), "weight");
    let mut bad = x.clone();
    bad[7] = f32::NAN;
    assert!(matches!(
        conv2d(&bad, &s, &w, None, &mut out, par),
        Err(KernelError::NonFinite { index: 7, .. })
    ));
    assert!(matches!(
        conv2d_scalar(&bad, &s, &w, None, &mut out),
        Err(KernelError::NonFinite { index: 7, .. })
    ));
    // A tensor whose rows are not kh * kw * c_in long cannot become a weight.
    let t = QuantizedTensor::quantize(Format::F32, 2, 10, &[0.0; 20]).unwrap();
    assert!(matches!(
        ConvWeight::from_tensor(t, 3, 3, 3),
        Err(KernelError::ShapeMismatch { .. })
    ));
}

#[test]
fn an_empty_batch_gives_an_empty_output() {
    let w = ConvWeight::from_ohwi(Format::Q8_0, 4, 32, 3, 3, &[0.5; 4 * 32 * 9]).unwrap();
    let s = Conv2dShape::new(0, 6, 6, &w, Conv2dParams::new(1, 1)).unwrap();
    assert_eq!((s.input_len(), s.output_len()), (0, 0));
    conv2d(&[], &s, &w, None, &mut [], Parallelism::Rayon).unwrap();
}
