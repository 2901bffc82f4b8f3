//! `haagenti-adaptive quantize`, run as a user would run it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
}

fn f32_bytes(n: usize, seed: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((i as f32 * 0.173 + seed).sin() * 0.5).to_le_bytes())
        .collect()
}

/// A checkpoint with a quantizable weight, a bias and a row length that is not a multiple of 32.
fn write_model(path: &Path) {
    let w = f32_bytes(64 * 128, 0.0);
    let b = f32_bytes(64, 1.0);
    let odd = f32_bytes(4 * 20, 2.0);
    let views = HashMap::from([
        (
            "blk.0.weight",
            TensorView::new(Dtype::F32, vec![64, 128], &w).unwrap(),
        ),
        (
            "blk.0.bias",
            TensorView::new(Dtype::F32, vec![64], &b).unwrap(),
        ),
        (
            "odd.weight",
            TensorView::new(Dtype::F32, vec![4, 20], &odd).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_report_lists_every_tensor_and_the_file_lands_beside_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    let out = bin()
        .args([
            "quantize",
            input.to_str().unwrap(),
            "--type",
            "q4_0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 3);
    let by_name = |n: &str| tensors.iter().find(|t| t["name"] == n).unwrap();
    let w = by_name("blk.0.weight");
    assert_eq!(w["format"], "q4_0");
    assert_eq!(w["bytes"], 64 * 4 * 18);
    assert_eq!(w["bytes_before"], 64 * 128 * 4);
    assert!(w["sqnr_db"].as_f64().unwrap() > 15.0);
    assert!(w["max_abs"].as_f64().unwrap() > 0.0);
    assert_eq!(by_name("blk.0.bias")["format"], "f16");
    assert_eq!(by_name("blk.0.bias")["fallback"], "vector");
    assert_eq!(by_name("odd.weight")["format"], "f16");
    assert_eq!(by_name("odd.weight")["fallback"], "row_length");
    assert_eq!(json["fallbacks"], 2);
    let total: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(json["total_bytes"].as_u64().unwrap(), total);
    assert_eq!(
        files_in(dir.path()),
        vec!["model.gguf", "model.safetensors"]
    );
    let gguf = std::fs::read(dir.path().join("model.gguf")).unwrap();
    assert_eq!(&gguf[..4], b"GGUF");
    assert_eq!(json["file_bytes"].as_u64().unwrap(), gguf.len() as u64);
}

#[test]
fn table_report_and_explicit_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    let target = dir.path().join("sub.q8.gguf");
    let out = bin()
        .args([
            "quantize",
            input.to_str().unwrap(),
            "--type",
            "q8_0",
            "--out",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "blk.0.weight",
        "blk.0.bias",
        "odd.weight",
        "q8_0",
        "f16 (rank 1)",
        "wrote",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(target.exists());
    assert!(!dir.path().join("model.gguf").exists());
}

fn assert_fails_cleanly(dir: &Path, input: &Path, expect: &str) {
    let before = files_in(dir);
    let out = bin()
        .args(["quantize", input.to_str().unwrap(), "--type", "q4_1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expect), "{expect:?} not in {err}");
    assert!(out.stdout.is_empty());
    assert_eq!(files_in(dir), before, "no output may be left behind");
}

#[test]
fn missing_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails_cleanly(
        dir.path(),
        &dir.path().join("absent.safetensors"),
        "absent.safetensors",
    );
}

#[test]
fn corrupt_header_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.safetensors");
    let mut bytes = 20u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"w\": not json at al");
    std::fs::write(&input, bytes).unwrap();
    assert_fails_cleanly(dir.path(), &input, "not a valid safetensors file");
}

#[test]
fn unsupported_dtype_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ints.safetensors");
    let ints: Vec<u8> = (0..64i64).flat_map(|v| v.to_le_bytes()).collect();
    let w = f32_bytes(2 * 32, 0.0);
    let views = HashMap::from([
        (
            "ids",
            TensorView::new(Dtype::I64, vec![2, 32], &ints).unwrap(),
        ),
        ("w", TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap()),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    assert_fails_cleanly(dir.path(), &input, "tensor `ids` has dtype I64");
}

#[test]
fn unknown_type_is_rejected_by_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    let out = bin()
        .args(["quantize", input.to_str().unwrap(), "--type", "q5_0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("q5_0"));
    assert_eq!(files_in(dir.path()), vec!["model.safetensors"]);
}
