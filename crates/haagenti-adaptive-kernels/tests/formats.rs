//! Formats against hand-computed blocks and an independent reference, round-trip error bounds,
//! and the errors bad input gets.
//!
//! The expected bytes were computed by hand (see the comments) and cross-checked with a numpy
//! transcription of ggml's `quantize_row_*_ref` in float32 arithmetic (rounding `roundf`-style,
//! f16 through numpy's correctly rounded conversion).

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, cast_blocks};
use haagenti_adaptive_kernels::{Format, KernelError, QuantizedTensor, error_stats, scalar};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn bytes(format: Format, x: &[f32]) -> Vec<u8> {
    QuantizedTensor::quantize(format, 1, x.len(), x)
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The same bytes from the scalar oracle and from the dispatched (SIMD where present) kernels.
fn oracle_bytes(format: Format, x: &[f32]) -> Vec<u8> {
    let nb = x.len() / 32;
    match format {
        Format::Q8_0 => {
            let mut b = vec![BlockQ8_0::default(); nb];
            scalar::quantize_row_q8_0(x, &mut b);
            haagenti_adaptive_kernels::blocks::block_bytes(&b).to_vec()
        }
        Format::Q4_0 => {
            let mut b = vec![BlockQ4_0::default(); nb];
            scalar::quantize_row_q4_0(x, &mut b);
            haagenti_adaptive_kernels::blocks::block_bytes(&b).to_vec()
        }
        Format::Q4_1 => {
            let mut b = vec![BlockQ4_1::default(); nb];
            scalar::quantize_row_q4_1(x, &mut b);
            haagenti_adaptive_kernels::blocks::block_bytes(&b).to_vec()
        }
        _ => unreachable!(),
    }
}

fn check(format: Format, x: &[f32], expected_hex: &str) {
    let expected = hex(expected_hex);
    assert_eq!(bytes(format, x), expected, "{format} via QuantizedTensor");
    assert_eq!(
        oracle_bytes(format, x),
        expected,
        "{format} via the scalar oracle"
    );
}

#[test]
fn q8_0_hand_block_with_ties() {
    // amax = 127, so d = 1 (f16 0x3c00) and q = roundf(x): ties go away from zero, and
    // 0.49999997 (just below 0.5) goes to 0, which adding 0.5 and truncating would not give.
    let mut x = vec![
        127.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        0.499_999_97,
        -0.499_999_97,
        126.5,
        -126.5,
        -127.0,
        3.0,
        0.0,
        -0.0,
    ];
    x.extend((15..32).map(|j| (j - 20) as f32));
    check(
        Format::Q8_0,
        &x,
        "003c7f01ff02fe03fd00007f8181030000fbfcfdfeff000102030405060708090a0b",
    );
}

#[test]
fn q4_0_hand_blocks_negative_and_positive_max() {
    // The first value of largest magnitude is -8: d = -8 / -8 = 1, q = min(15, trunc(x + 8.5)).
    // The later +8.0 has the same magnitude and does not replace it; it clamps to 15.
    let mut x = vec![-8.0, 7.0, 7.5, 0.0, -0.5, 8.0, 0.5, -7.6];
    x.extend((8..32).map(|j| (j % 16) as f32 - 7.0));
    check(Format::Q4_0, &x, "003c102f3f48586f798099aabbccddeeffff");
    // Here +8 comes first: d = -1 (f16 0xbc00), q = trunc(8.5 - x): 8 -> 0, -8 -> 16 -> 15.
    let mut y = vec![0.0; 32];
    y[0] = 8.0;
    y[1] = -8.0;
    check(Format::Q4_0, &y, "00bc808f8888888888888888888888888888");
}

#[test]
fn q4_1_hand_block() {
    // min 0, max 15: d = 1, m = 0, q = min(15, trunc(x + 0.5)). 0.49999997 + 0.5 rounds to 1.0 in
    // f32 (as it does in ggml), so it quantizes to 1.
    let mut x = vec![0.0, 15.0, 0.5, 0.499_999_97, 14.5, 14.6, 7.5, 1.0];
    x.extend((8..32).map(|j| (j % 16) as f32));
    check(Format::Q4_1, &x, "003c0000001f21314f5f68718899aabbccddeeff");
}

#[test]
fn zero_blocks_keep_ggml_signs() {
    check(Format::Q8_0, &[0.0; 32], &"00".repeat(34));
    // Q4_0: max stays +0.0, so d = 0 / -8 = -0.0 (f16 0x8000); id = 0, so every q is 8.
    let q4_0_zero = format!("0080{}", "88".repeat(16));
    check(Format::Q4_0, &[0.0; 32], &q4_0_zero);
    check(Format::Q4_0, &[-0.0; 32], &q4_0_zero);
    check(Format::Q4_1, &[0.0; 32], &"00".repeat(20));
    // Q4_1 keeps the first of equal minima: -0.0 first gives m = -0.0 (0x8000).
    let mut x = [0.0f32; 32];
    x[0] = -0.0;
    check(Format::Q4_1, &x, &format!("00000080{}", "00".repeat(16)));
    let mut x = [-0.0f32; 32];
    x[0] = 0.0;
    check(Format::Q4_1, &x, &"00".repeat(20));
}

#[test]
fn golden_bytes_match_independent_reference() {
    let x: Vec<f32> = (0..64)
        .map(|i| (((i * 37) % 64) as f32 - 31.5) / 8.3)
        .collect();
    check(
        Format::Q8_0,
        &x,
        "a6278116a93ed267fa8d22b54bde7306992ec257ea7f12a53ace63f6891eb147da6f682702922cbb55e57f0f9e38c862f1811bab45d46efe8d28b751e17b0a9a34c45eed",
    );
    check(
        Format::Q4_0,
        &x,
        "973740d973fc952ec851ea731da63fc862fb59b748bf158cf36ad037ae047ce259cf269d",
    );
    check(
        Format::Q4_1,
        &x,
        "0c3897c340d962fb952eb751da730c953ec851ead73759c3c851ea731da63fc862fb841db740d962",
    );
}

#[test]
fn float_formats_are_little_endian_ieee() {
    let x = [1.0f32, -2.0, 0.333_333_34, 65504.0];
    assert_eq!(bytes(Format::F32, &x)[..4], 1.0f32.to_le_bytes());
    let h = bytes(Format::F16, &x);
    assert_eq!(h[..4], [0x00, 0x3c, 0x00, 0xc0]);
    assert_eq!(h[4..6], 0x3555u16.to_le_bytes()); // 1/3 rounds to 0x3555
    assert_eq!(h[6..], 0x7bffu16.to_le_bytes()); // f16::MAX
    let b = bytes(Format::BF16, &x);
    assert_eq!(b[..4], [0x80, 0x3f, 0x00, 0xc0]);
    assert_eq!(b[4..6], 0x3eabu16.to_le_bytes()); // 0x3eaaaaab rounds up to 0x3eab
}

fn wave(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let noise = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            (i as f32 * 0.05).sin() * 3.0 + noise * if i % 97 == 0 { 40.0 } else { 1.0 }
        })
        .collect()
}

#[test]
fn round_trip_errors_stay_within_block_bounds() {
    let (rows, cols) = (8, 256);
    let x = wave(rows * cols, 7);
    let eps = 2f32.powi(-10); // f16 relative rounding (2^-11), doubled for slack
    for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
        let t = QuantizedTensor::quantize(format, rows, cols, &x).unwrap();
        let y = t.to_f32();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let min = xb.iter().copied().fold(f32::MAX, f32::min);
            let max = xb.iter().copied().fold(f32::MIN, f32::max);
            let bound = match format {
                // |x - q d| <= d / 2, plus |q| <= 127 times the scale's f16 rounding.
                Format::Q8_0 => amax / 127.0 * (0.5 + 127.0 * eps),
                // 16 levels over [-8d, 8d): up to a whole d at the clamped end.
                Format::Q4_0 => amax / 8.0 * (1.0 + 8.0 * eps),
                // half a step, plus the f16 rounding of d (times 15) and of m.
                Format::Q4_1 => (max - min) / 15.0 * (0.5 + 15.0 * eps) + min.abs() * eps,
                _ => unreachable!(),
            } + 1e-6;
            for (a, b) in xb.iter().zip(yb) {
                assert!(
                    (a - b).abs() <= bound,
                    "{format}: {a} -> {b}, bound {bound}"
                );
            }
        }
        let s = error_stats(&x, &y).unwrap();
        let min_sqnr = match format {
            Format::Q8_0 => 35.0,
            Format::Q4_1 => 18.0,
            _ => 15.0,
        };
        assert!(s.sqnr_db > min_sqnr, "{format}: {s:?}");
        assert!(s.cosine > 0.98, "{format}: {s:?}");
    }
    for (format, max_rel) in [(Format::F16, 2f32.powi(-11)), (Format::BF16, 2f32.powi(-8))] {
        let y = QuantizedTensor::quantize(format, rows, cols, &x)
            .unwrap()
            .to_f32();
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (a - b).abs() <= a.abs() * max_rel + 1e-7,
                "{format}: {a} -> {b}"
            );
        }
    }
    let y = QuantizedTensor::quantize(Format::F32, rows, cols, &x)
        .unwrap()
        .to_f32();
    assert_eq!(x, y);
}

#[test]
fn bad_input_gets_typed_errors() {
    let x = vec![0.5f32; 96];
    let e = QuantizedTensor::quantize(Format::Q4_0, 2, 48, &x).unwrap_err();
    assert_eq!(
        e,
        KernelError::RowLengthNotBlockMultiple {
            format: Format::Q4_0,
            cols: 48
        }
    );
    assert_eq!(
        e.to_string(),
        "row length 48 is not a multiple of 32, as q4_0 needs"
    );
    // Float formats take any row length.
    assert!(QuantizedTensor::quantize(Format::F16, 2, 48, &x).is_ok());

    let e = QuantizedTensor::quantize(Format::Q8_0, 2, 64, &x).unwrap_err();
    assert_eq!(
        e,
        KernelError::ShapeMismatch {
            what: "values",
            expected: 128,
            actual: 96
        }
    );

    let mut y = vec![1.0f32; 128];
    y[100] = f32::INFINITY;
    y[37] = f32::NAN;
    for format in Format::ALL {
        let e = QuantizedTensor::quantize(format, 2, 64, &y).unwrap_err();
        match e {
            KernelError::NonFinite { index: 37, value } => assert!(value.is_nan()),
            other => panic!("{format}: {other:?}"),
        }
        assert!(e.to_string().starts_with("value at index 37 is NaN"), "{e}");
    }
    y[37] = 1.0;
    assert!(matches!(
        QuantizedTensor::quantize(Format::Q8_0, 2, 64, &y),
        Err(KernelError::NonFinite { index: 100, value }) if value == f32::INFINITY
    ));

    let e = QuantizedTensor::quantize(Format::Q8_0, usize::MAX, 64, &[]).unwrap_err();
    assert!(matches!(e, KernelError::SizeOverflow { .. }), "{e:?}");
}

#[test]
fn values_out_of_16_bit_range_are_rejected() {
    let mut x = vec![1.0f32; 64];
    x[40] = 1.0e6;
    let e = QuantizedTensor::quantize(Format::F16, 1, 64, &x).unwrap_err();
    assert_eq!(
        e,
        KernelError::OutOfRange {
            format: Format::F16,
            index: 40,
            value: 1.0e6
        }
    );
    // 1e7 / 127 fits f16's 65504 no more: the Q8_0 scale of block 1 overflows, and the error
    // names the value that made it overflow (index 40), not the block's first.
    x[40] = -1.0e7;
    let e = QuantizedTensor::quantize(Format::Q8_0, 1, 64, &x).unwrap_err();
    assert_eq!(
        e,
        KernelError::OutOfRange {
            format: Format::Q8_0,
            index: 40,
            value: -1.0e7
        }
    );
    // Q4_1 stores the minimum itself as f16.
    x[40] = -7.0e4;
    assert!(QuantizedTensor::quantize(Format::Q8_0, 1, 64, &x).is_ok());
    assert!(matches!(
        QuantizedTensor::quantize(Format::Q4_1, 1, 64, &x),
        Err(KernelError::OutOfRange { index: 40, .. })
    ));
    // bf16 and f32 keep f32's range.
    x[40] = 3.0e38;
    assert!(QuantizedTensor::quantize(Format::BF16, 1, 64, &x).is_ok());
    x[40] = f32::MAX;
    assert!(matches!(
        QuantizedTensor::quantize(Format::BF16, 1, 64, &x),
        Err(KernelError::OutOfRange { index: 40, .. })
    ));
    assert!(QuantizedTensor::quantize(Format::F32, 1, 64, &x).is_ok());
}

#[test]
fn empty_tensors_work() {
    for format in Format::ALL {
        for (rows, cols) in [(0, 64), (3, 0), (0, 0)] {
            let t = QuantizedTensor::quantize(format, rows, cols, &[]).unwrap();
            assert_eq!((t.rows(), t.cols(), t.byte_len()), (rows, cols, 0));
            assert!(t.to_f32().is_empty());
            assert!(t.row_bytes(0).is_empty() || rows == 0);
            let back = QuantizedTensor::from_bytes(format, rows, cols, Vec::new()).unwrap();
            assert_eq!(back, t);
            assert_eq!(t.convert(Format::Q8_0).unwrap().byte_len(), 0);
        }
    }
}

#[test]
fn bytes_round_trip_and_corrupt_bytes_are_rejected() {
    let x = wave(3 * 64, 3);
    for format in Format::ALL {
        let t = QuantizedTensor::quantize(format, 3, 64, &x).unwrap();
        assert_eq!(t.byte_len(), format.row_bytes(64).unwrap() * 3);
        let back = QuantizedTensor::from_bytes(format, 3, 64, t.as_bytes().to_vec()).unwrap();
        assert_eq!(back, t);
        let mut rows = Vec::new();
        for r in 0..3 {
            rows.extend_from_slice(t.row_bytes(r));
        }
        assert_eq!(rows, t.as_bytes());
        let short = t.as_bytes()[1..].to_vec();
        assert!(matches!(
            QuantizedTensor::from_bytes(format, 3, 64, short),
            Err(KernelError::InvalidData(_))
        ));
    }
    // A NaN scale in the second block of a Q8_0 tensor: f16 0x7e00 at byte 34.
    let t = QuantizedTensor::quantize(Format::Q8_0, 3, 64, &x).unwrap();
    let mut b = t.as_bytes().to_vec();
    b[34..36].copy_from_slice(&0x7e00u16.to_le_bytes());
    let e = QuantizedTensor::from_bytes(Format::Q8_0, 3, 64, b).unwrap_err();
    assert_eq!(
        e,
        KernelError::InvalidData("q8_0 block 1 holds a NaN or infinite number".into())
    );
    // An infinite Q4_1 minimum.
    let t = QuantizedTensor::quantize(Format::Q4_1, 3, 64, &x).unwrap();
    let mut b = t.as_bytes().to_vec();
    b[2..4].copy_from_slice(&0x7c00u16.to_le_bytes());
    assert!(QuantizedTensor::from_bytes(Format::Q4_1, 3, 64, b).is_err());
    assert!(matches!(
        QuantizedTensor::from_bytes(Format::Q8_0, 1, 33, vec![0; 34]),
        Err(KernelError::RowLengthNotBlockMultiple { .. })
    ));
}

#[test]
fn block_views_and_conversions() {
    let x = wave(2 * 64, 11);
    let t = QuantizedTensor::quantize(Format::Q8_0, 2, 64, &x).unwrap();
    let row1: &[BlockQ8_0] = t.row_blocks(1).unwrap();
    assert_eq!(row1.len(), 2);
    assert_eq!(cast_blocks::<BlockQ8_0>(t.row_bytes(1)).unwrap(), row1);
    assert!(t.row_blocks::<BlockQ4_0>(0).is_err());
    assert!(t.row_blocks::<BlockQ8_0>(2).is_err());
    assert!(cast_blocks::<BlockQ8_0>(&t.as_bytes()[..33]).is_err());
    let all: &[BlockQ8_0] = t.blocks().unwrap();
    assert_eq!(all.len(), 4);

    // Conversions go through f32: Q8_0 -> F32 is the dequantized tensor, and back is the same
    // bytes (requantizing a dequantized Q8_0 block reproduces it).
    let f = t.convert(Format::F32).unwrap();
    assert_eq!(f.to_f32(), t.to_f32());
    let back = f.convert(Format::Q8_0).unwrap();
    assert_eq!(back.to_f32(), t.to_f32());
    assert_eq!(t.convert(Format::Q8_0).unwrap(), t);
    let h = QuantizedTensor::quantize(Format::F32, 1, 48, &x[..48]).unwrap();
    assert_eq!(
        h.convert(Format::Q4_1).unwrap_err(),
        KernelError::RowLengthNotBlockMultiple {
            format: Format::Q4_1,
            cols: 48
        }
    );
    let mut out = vec![0.0; 5];
    assert!(matches!(
        t.dequantize_into(&mut out),
        Err(KernelError::ShapeMismatch {
            what: "out",
            expected: 128,
            actual: 5
        })
    ));
}

#[test]
fn precision_mapping() {
    assert_eq!(Format::from(Precision::INT4), Format::Q4_0);
    assert_eq!(Format::from(Precision::INT8), Format::Q8_0);
    assert_eq!(Format::from(Precision::BF16), Format::BF16);
    assert_eq!(Format::from(Precision::FP16), Format::F16);
    assert_eq!(Format::from(Precision::FP32), Format::F32);
    for p in Precision::ALL {
        assert_eq!(Format::from(p).effective_bits(), p.effective_bits());
    }
}
