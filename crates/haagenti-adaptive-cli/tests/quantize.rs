//! `haagenti-adaptive quantize`, run as a user would run it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

#[cfg(unix)]
#[path = "support/timed.rs"]
mod timed;
#[cfg(unix)]
use timed::output_within_30s;

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

/// A checkpoint whose first weight is NaN, for tests of checks that must come before any work:
/// were such a check made after the work, the NaN's error would come first.
#[cfg(unix)]
fn write_nan_model(path: &Path) {
    let mut w = f32_bytes(64, 0.0);
    w[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views = HashMap::from([("w", TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap())]);
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

fn quantize(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    bin()
        .current_dir(dir)
        .arg("quantize")
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[cfg(unix)]
#[test]
fn every_alias_of_the_input_is_refused_as_output_and_the_input_survives() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    let original = std::fs::read(&input).unwrap();
    std::os::unix::fs::symlink(&input, dir.path().join("link.gguf")).unwrap();
    std::fs::hard_link(&input, dir.path().join("hard.gguf")).unwrap();
    let before = files_in(dir.path());
    let absolute = input.to_str().unwrap().to_owned();
    let dotted = dir.path().join(".").join("model.safetensors");
    for out in [
        "./model.safetensors",
        "model.safetensors",
        absolute.as_str(),
        dotted.to_str().unwrap(),
        "link.gguf",
        "hard.gguf",
    ] {
        let o = quantize(
            dir.path(),
            &[
                os("model.safetensors"),
                os("--type"),
                os("q8_0"),
                os("--out"),
                os(out),
            ],
        );
        assert!(!o.status.success(), "--out {out} was accepted");
        assert!(stderr(&o).contains("is the input"), "{out}: {}", stderr(&o));
        assert_eq!(std::fs::read(&input).unwrap(), original, "--out {out}");
        assert_eq!(files_in(dir.path()), before, "--out {out}");
    }
}

#[cfg(unix)]
#[test]
fn devices_standard_output_directories_and_dangling_links_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    write_nan_model(&dir.path().join("model.safetensors"));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
    let before = files_in(dir.path());
    for (out, expect) in [
        ("/dev/null", "is a device"),
        ("-", "standard output"),
        ("sub", "is a directory"),
        ("sub/", "is a directory"),
        ("dangling", "symbolic link to nothing"),
        ("missing/model.gguf", "does not exist"),
    ] {
        let o = quantize_q4_0_to(dir.path(), out);
        assert!(!o.status.success(), "--out {out} was accepted");
        assert!(stderr(&o).contains(expect), "{out}: {}", stderr(&o));
        assert_eq!(files_in(dir.path()), before, "--out {out}");
    }
}

#[cfg(unix)]
#[test]
fn the_output_gets_the_mode_of_a_new_file_under_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    for (umask, mode) in [("022", 0o644), ("027", 0o640)] {
        let out = dir.path().join(format!("m{umask}.gguf"));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_haagenti-adaptive"))
            .args(["quantize", "model.safetensors", "--type", "q8_0", "--out"])
            .arg(&out)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "umask {umask}");
    }
}

#[test]
fn a_truncated_input_is_an_error_naming_the_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    let len = std::fs::metadata(&input).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .unwrap();
    file.set_len(len - 100).unwrap();
    drop(file);
    assert_fails_cleanly(
        dir.path(),
        &input,
        &format!(
            "is {} bytes but its header describes {len}: truncated",
            len - 100
        ),
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_as_input_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = output_within_30s(bin().args(["quantize", fifo.to_str().unwrap(), "--type", "q8_0"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a FIFO, not a regular file"),
        "{}",
        stderr(&out)
    );
}

/// A checkpoint shaped like sentence-transformers' all-MiniLM-L6-v2: F32 weights, F32 biases and
/// norms, an I64 `embeddings.position_ids`, plus a BOOL mask GGUF has no type for.
#[test]
fn a_checkpoint_with_integer_and_bool_tensors_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let ids: Vec<u8> = (0..512i64).flat_map(|v| v.to_le_bytes()).collect();
    let emb = f32_bytes(512 * 384, 0.3);
    let q = f32_bytes(384 * 384, 0.7);
    let bias = f32_bytes(384, 1.1);
    let mask = vec![1u8; 16];
    let views = HashMap::from([
        (
            "embeddings.position_ids",
            TensorView::new(Dtype::I64, vec![1, 512], &ids).unwrap(),
        ),
        (
            "embeddings.position_embeddings.weight",
            TensorView::new(Dtype::F32, vec![512, 384], &emb).unwrap(),
        ),
        (
            "encoder.layer.0.attention.self.query.weight",
            TensorView::new(Dtype::F32, vec![384, 384], &q).unwrap(),
        ),
        (
            "encoder.layer.0.attention.self.query.bias",
            TensorView::new(Dtype::F32, vec![384], &bias).unwrap(),
        ),
        (
            "mask",
            TensorView::new(Dtype::BOOL, vec![16], &mask).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let out = quantize(
        dir.path(),
        &[
            os("model.safetensors"),
            os("--type"),
            os("q8_0"),
            os("--json"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tensors"].as_array().unwrap().len(), 3);
    let carried = json["carried"].as_array().unwrap();
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0]["name"], "embeddings.position_ids");
    assert_eq!(carried[0]["ggml_type"], "i64");
    let skipped = json["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["name"], "mask");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("BOOL"));

    let gguf = haagenti_gguf(&dir.path().join("model.gguf"));
    let info = gguf.tensor_info("embeddings.position_ids").unwrap();
    assert_eq!(info.ggml_type, 27);
    assert_eq!(info.shape(), vec![1, 512]);
    assert_eq!(
        gguf.tensor_bytes("embeddings.position_ids").unwrap(),
        &ids[..]
    );
    assert!(gguf.tensor_info("mask").is_none());

    let table = quantize(
        dir.path(),
        &[os("model.safetensors"), os("--type"), os("q8_0")],
    );
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("carried unchanged: embeddings.position_ids"),
        "{text}"
    );
    assert!(text.contains("skipped: mask"), "{text}");
}

fn haagenti_gguf(path: &Path) -> haagenti_adaptive::kernels::gguf::GgufFile {
    haagenti_adaptive::kernels::gguf::GgufFile::open(path).unwrap()
}

#[test]
fn values_a_format_cannot_hold_fall_back_with_the_exact_index() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let mut big: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.1).sin()).collect();
    big[77] = 9.0e6; // beyond Q8_0's scale (65504 * 127), within f32
    let mut mask = vec![0.0f32; 2 * 32];
    mask[5] = f32::MIN; // an attention mask: beyond bf16 (rounds to -inf) and f16
    let big_b: Vec<u8> = big.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mask_b: Vec<u8> = mask.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = HashMap::from([
        (
            "big.weight",
            TensorView::new(Dtype::F32, vec![4, 64], &big_b).unwrap(),
        ),
        (
            "mask",
            TensorView::new(Dtype::F32, vec![2, 32], &mask_b).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let run = |ty: &str| {
        let out = quantize(
            dir.path(),
            &[os("model.safetensors"), os("--type"), os(ty), os("--json")],
        );
        assert!(out.status.success(), "{ty}: {}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let json = run("q8_0");
    let t = |json: &serde_json::Value, n: &str| {
        json["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    let big = t(&json, "big.weight");
    // Beyond Q8_0's scale is beyond f16 too (8.3e6 > 65504): the chain ends at f32.
    assert_eq!(big["format"], "f32");
    assert_eq!(big["fallback"], "out_of_block_range");
    let detail = big["fallback_detail"].as_str().unwrap();
    assert!(
        detail.contains("index 77") && detail.contains("q8_0"),
        "{detail}"
    );
    let mask = t(&json, "mask");
    assert_eq!(mask["format"], "f32");
    assert!(
        mask["fallback_detail"]
            .as_str()
            .unwrap()
            .contains("index 5")
    );

    let json = run("bf16");
    let mask = t(&json, "mask");
    assert_eq!(mask["format"], "f32");
    assert_eq!(mask["fallback"], "out_of_bf16_range");
    assert_eq!(t(&json, "big.weight")["format"], "bf16");
}

#[test]
fn names_with_escapes_and_65536_bytes_print_safely() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let evil = "evil\u{1b}[2J\u{7}.weight".to_owned();
    let long = format!("{}.weight", "l".repeat(65_536));
    let w = f32_bytes(2 * 32, 0.0);
    let views = HashMap::from([
        (
            evil.as_str(),
            TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap(),
        ),
        (
            long.as_str(),
            TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let out = quantize(
        dir.path(),
        &[os("model.safetensors"), os("--type"), os("q8_0")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "raw escapes printed"
    );
    assert!(text.contains("evil\\u{1b}[2J\\u{7}.weight"), "{text}");
    assert!(
        text.lines().all(|l| l.len() < 400),
        "a line is not shortened"
    );
    assert!(text.contains("..."));
    let json = quantize(
        dir.path(),
        &[
            os("model.safetensors"),
            os("--type"),
            os("q8_0"),
            os("--json"),
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let names: Vec<&str> = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&long.as_str()) && names.contains(&evil.as_str()));
}

#[test]
fn a_name_with_escape_and_newline_is_escaped_in_the_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let evil = "bad\u{1b}[31m\nerror: forged line.weight";
    let mut w = f32_bytes(2 * 32, 0.0);
    w[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
    let views = HashMap::from([(evil, TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap())]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    // One line (the newline did not split it), naming the tensor escaped and the index.
    assert_fails_cleanly(
        dir.path(),
        &input,
        "tensor `bad\\u{1b}[31m\\nerror: forged line.weight`",
    );
    let out = quantize(
        dir.path(),
        &[os("model.safetensors"), os("--type"), os("q8_0")],
    );
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}'), "raw ESC in {err:?}");
    assert!(err.contains("index 3"), "{err}");
}

#[test]
fn a_shape_gguf_readers_refuse_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let views = HashMap::from([(
        "huge",
        TensorView::new(Dtype::F32, vec![1usize << 63, 0], &[]).unwrap(),
    )]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    assert_fails_cleanly(dir.path(), &input, "gguf readers refuse");
}

#[test]
fn stale_temporaries_of_a_dead_run_are_removed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_model(&input);
    // A pid above Linux's maximum (2^22) cannot be running.
    let stale = dir
        .path()
        .join(format!(".model.gguf.{}.1.haagenti-partial", u32::MAX));
    std::fs::write(&stale, b"left by a killed run").unwrap();
    let out = quantize(
        dir.path(),
        &[os("model.safetensors"), os("--type"), os("q4_0")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    if Path::new("/proc/self").exists() {
        assert_eq!(
            files_in(dir.path()),
            vec!["model.gguf", "model.safetensors"]
        );
    }
}

/// A checkpoint large enough that quantizing it takes a while: 48 tensors of 2^20 values.
fn write_large_model(path: &Path) {
    let data: Vec<Vec<u8>> = (0..48).map(|i| f32_bytes(1 << 20, i as f32)).collect();
    let names: Vec<String> = (0..48).map(|i| format!("blk.{i}.weight")).collect();
    let views: HashMap<&str, TensorView<'_>> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, vec![1024, 1024], d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[cfg(unix)]
#[test]
fn sigterm_sigint_and_sighup_during_a_long_quantize_leave_no_temporary() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_large_model(&input);
    for (signal, number) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let mut child = bin()
            .args(["quantize", input.to_str().unwrap(), "--type", "q4_0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the temporary exists, then interrupt.
        let start = std::time::Instant::now();
        let temp_seen = loop {
            if files_in(dir.path())
                .iter()
                .any(|n| n.ends_with(".haagenti-partial"))
            {
                break true;
            }
            if child.try_wait().unwrap().is_some()
                || start.elapsed() > std::time::Duration::from_secs(120)
            {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        assert!(temp_seen, "SIG{signal}: no temporary file appeared");
        let killed = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "SIG{signal}: the run finished first");
        assert!(
            status.code() == Some(128 + number) || status.signal() == Some(number),
            "SIG{signal}: {status:?}"
        );
        assert_eq!(
            files_in(dir.path()),
            vec!["model.safetensors"],
            "SIG{signal} left files behind"
        );
    }
}

/// Runs `quantize ARGS` in `dir`, killing it and failing the test if it takes over 30 s (a FIFO
/// opened for reading or writing would block forever; `/dev/zero` would read forever).
#[cfg(unix)]
fn quantize_within_30s(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    output_within_30s(bin().current_dir(dir).arg("quantize").args(args))
}

/// `quantize model.safetensors --type q4_0 --out OUT` in `dir`, within 30 s.
#[cfg(unix)]
fn quantize_q4_0_to(dir: &Path, out: &str) -> Output {
    let args = ["model.safetensors", "--type", "q4_0", "--out", out];
    quantize_within_30s(dir, &args.map(os))
}

#[cfg(unix)]
#[test]
fn dev_zero_and_a_directory_as_input_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model.safetensors")).unwrap();
    let before = files_in(dir.path());
    for (input, expect) in [
        ("/dev/zero", "/dev/zero is a device, not a regular file"),
        ("model.safetensors", "is a directory, not a regular file"),
    ] {
        let out = quantize_within_30s(
            dir.path(),
            &[
                os(input),
                os("--type"),
                os("q8_0"),
                os("--out"),
                os("out.gguf"),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{input}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{input}: {err}");
        assert_eq!(files_in(dir.path()), before, "{input}");
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_and_a_socket_as_out_are_refused_before_any_work_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    write_nan_model(&dir.path().join("model.safetensors"));
    let made = Command::new("mkfifo")
        .arg(dir.path().join("fifo.gguf"))
        .status()
        .unwrap();
    assert!(made.success());
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("socket.gguf")).unwrap();
    let before = files_in(dir.path());
    for (out, expect) in [("fifo.gguf", "is a FIFO"), ("socket.gguf", "is a socket")] {
        let o = quantize_q4_0_to(dir.path(), out);
        assert_eq!(o.status.code(), Some(1), "--out {out}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{out}: {}", stderr(&o));
        assert!(!stderr(&o).contains("NaN"), "{out}: {}", stderr(&o));
        assert_eq!(files_in(dir.path()), before, "--out {out}");
    }
    use std::os::unix::fs::FileTypeExt as _;
    let fifo = std::fs::symlink_metadata(dir.path().join("fifo.gguf")).unwrap();
    assert!(fifo.file_type().is_fifo(), "the FIFO was replaced");
    let socket = std::fs::symlink_metadata(dir.path().join("socket.gguf")).unwrap();
    assert!(socket.file_type().is_socket(), "the socket was replaced");
}
