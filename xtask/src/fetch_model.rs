//! `cargo xtask fetch-model`: the pretrained models the project runs, fetched with pip (the only
//! network access) and checked by sha256 before they are stored.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// A model shipped inside a pip wheel.
struct WheelModel {
    /// The name `fetch-model` takes.
    name: &'static str,
    /// `package==version` for `pip download`.
    requirement: &'static str,
    /// The file's path inside the wheel.
    member: &'static str,
    /// Hex sha256 of the file.
    sha256: &'static str,
}

const MODELS: &[WheelModel] = &[WheelModel {
    name: "terrain",
    requirement: "adaptive-terrain-diffusion==0.4.2",
    member: "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx",
    sha256: "95be54b4a39d58320e187a7ec533351c957f16a00be58773c86074828ee67887",
}];

/// Fetches the model `name` into the model folder unless a file with the right hash is there.
pub(crate) fn fetch(name: &str) -> anyhow::Result<()> {
    let Some(model) = MODELS.iter().find(|m| m.name == name) else {
        let known: Vec<_> = MODELS.iter().map(|m| m.name).collect();
        bail!("unknown model {name:?}: known models are {known:?}");
    };
    let dir = models_dir()?;
    let file_name = Path::new(model.member)
        .file_name()
        .context("model member has a file name")?;
    let dest = dir.join(file_name);
    if dest.exists() {
        if sha256_hex(&dest)? == model.sha256 {
            println!("{} is already present at {}", model.name, dest.display());
            return Ok(());
        }
        eprintln!("{} has the wrong sha256: fetching it again", dest.display());
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the model folder {}", dir.display()))?;

    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let python = std::env::var("HAAGENTI_PYTHON").unwrap_or_else(|_| "python3".into());
    let wheel = pip_download(&python, model.requirement, tmp.path())?;
    let extracted = tmp.path().join("extracted");
    // The wheel is a zip; pip's Python has `zipfile`, so no unzip tool or crate is needed.
    let status = Command::new(&python)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(&wheel)
        .arg(model.member)
        .arg(&extracted)
        .status()
        .with_context(|| format!("cannot run {python}"))?;
    if !status.success() {
        bail!(
            "{} has no {}: the package changed; check the version in xtask/src/fetch_model.rs",
            wheel.display(),
            model.member
        );
    }
    let file = extracted.join(model.member);
    let got = sha256_hex(&file)?;
    if got != model.sha256 {
        bail!(
            "{} from {} has sha256 {got}, expected {}: refusing to store it",
            model.member,
            model.requirement,
            model.sha256
        );
    }
    // Copy to a temporary name in the destination folder, then rename: never a half file.
    let partial = dir.join(format!("{}.partial", file_name.to_string_lossy()));
    std::fs::copy(&file, &partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    println!("{} stored at {}", model.name, dest.display());
    Ok(())
}

/// `pip download --no-deps` of one requirement into `dir`; returns the wheel's path.
fn pip_download(python: &str, requirement: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--quiet",
            "-d",
        ])
        .arg(dir)
        .arg(requirement)
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{python} not found: install Python 3 with pip (or set HAAGENTI_PYTHON) and retry"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot run {python}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            bail!("pip is not installed for {python}: run `{python} -m ensurepip` and retry");
        }
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!(
            "pip could not download {requirement} (check the network or a pip proxy setting): {}",
            last.trim()
        );
    }
    let wheel = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.with_context(|| format!("pip downloaded no wheel for {requirement}"))
}

/// The model folder: `HAAGENTI_MODELS`, else `~/.cache/haagenti-adaptive/models`.
fn models_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HAAGENTI_MODELS") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .context("neither HAAGENTI_MODELS nor HOME is set: set HAAGENTI_MODELS to a folder")?;
    Ok(PathBuf::from(home).join(".cache/haagenti-adaptive/models"))
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
