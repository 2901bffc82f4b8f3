//! `haagenti-adaptive denoise`: its output is checked before any work, as `quantize`'s is.
//! These cases need no model (the output check comes before the model is looked for).

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Output};

fn denoise(dir: &Path, input: &str, out: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
        .current_dir(dir)
        // An empty model folder: were the output checked after looking for the model, the
        // missing model would be the error.
        .env("HAAGENTI_MODELS", dir.join("no-models"))
        .args(["denoise", "--input", input, "--sigma", "1", "--out", out])
        .output()
        .expect("the binary runs")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_input_and_its_aliases_are_refused_as_output_and_the_input_survives() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("noisy.npy");
    let original = b"\x93NUMPY not really, and it must stay as it is".to_vec();
    std::fs::write(&input, &original).unwrap();
    std::os::unix::fs::symlink(&input, dir.path().join("link.npy")).unwrap();
    std::fs::hard_link(&input, dir.path().join("hard.npy")).unwrap();
    let before = files_in(dir.path());
    let absolute = input.to_str().unwrap().to_owned();
    for out in [
        "noisy.npy",
        "./noisy.npy",
        absolute.as_str(),
        "link.npy",
        "hard.npy",
    ] {
        let o = denoise(dir.path(), "noisy.npy", out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--out {out} was accepted");
        assert!(err.contains("is the input"), "{out}: {err}");
        assert_eq!(std::fs::read(&input).unwrap(), original, "--out {out}");
        assert_eq!(files_in(dir.path()), before, "--out {out}");
    }
}

#[test]
fn devices_standard_output_and_directories_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("noisy.npy"), b"x").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let before = files_in(dir.path());
    for (out, expect) in [
        ("/dev/null", "is a device"),
        ("-", "standard output"),
        ("sub", "is a directory"),
        ("missing/out.npy", "does not exist"),
    ] {
        let o = denoise(dir.path(), "noisy.npy", out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--out {out} was accepted");
        assert!(err.contains(expect), "{out}: {err}");
        assert!(!err.contains("cargo xtask fetch-model"), "{out}: {err}");
        assert_eq!(files_in(dir.path()), before, "--out {out}");
    }
}
