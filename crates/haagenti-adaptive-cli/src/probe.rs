//! `haagenti-adaptive probe`: this machine's CPU and GPU adapters, and the capabilities they give.

use std::fmt::Write as _;

use anyhow::Context as _;
use haagenti_adaptive::probe::{CapabilityReport, DeviceChoice, PrecisionCapabilities};
use serde::Serialize;

/// Arguments of `haagenti-adaptive probe`.
#[derive(clap::Args)]
pub(crate) struct ProbeArgs {
    /// Print the report as JSON (the report's fields plus `capabilities`).
    #[arg(long)]
    json: bool,
    /// Probe the CPU only; do not enumerate GPU adapters.
    #[arg(long)]
    cpu_only: bool,
    /// Memory budget in MiB for the derived capabilities, instead of the memory available now.
    #[arg(long, value_name = "MIB")]
    memory_mb: Option<u64>,
}

/// The JSON output: the report, with the capabilities derived from it beside.
#[derive(Serialize)]
struct ProbeOutput<'a> {
    #[serde(flatten)]
    report: &'a CapabilityReport,
    /// The CPU's capabilities; `null` when they cannot be derived (see `capabilities_note`).
    capabilities: Option<PrecisionCapabilities>,
    /// Why `capabilities` is `null`, or how it was derived.
    capabilities_note: String,
}

pub(crate) fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let report = if args.cpu_only {
        CapabilityReport::probe_cpu()
    } else {
        CapabilityReport::probe()
    };
    let (capabilities, capabilities_note) =
        match report.capabilities(DeviceChoice::Cpu, args.memory_mb) {
            Ok(caps) => (
                Some(caps),
                "cpu: this project's kernels run on the cpu; adapters are reported, not used"
                    .to_owned(),
            ),
            Err(err) => (None, err.to_string()),
        };
    let out = if args.json {
        let output = ProbeOutput {
            report: &report,
            capabilities,
            capabilities_note,
        };
        let mut text = serde_json::to_string_pretty(&output).context("serialising the report")?;
        text.push('\n');
        text
    } else {
        summary(&report, capabilities.as_ref(), &capabilities_note)
    };
    print!("{out}");
    Ok(())
}

/// The readable summary.
fn summary(
    report: &CapabilityReport,
    caps: Option<&PrecisionCapabilities>,
    caps_note: &str,
) -> String {
    let mut s = String::new();
    let cpu = &report.cpu;
    let mb = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |m| format!("{m} MiB"));
    // Writing to a String cannot fail.
    let _ = writeln!(s, "CPU");
    let _ = writeln!(
        s,
        "  model        {}",
        cpu.model_name.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "  arch         {}", cpu.arch);
    let _ = writeln!(s, "  cores        {}", cpu.cores);
    let features = if cpu.features.is_empty() {
        "none".to_owned()
    } else {
        cpu.features.join(" ")
    };
    let _ = writeln!(s, "  features     {features}");
    let _ = writeln!(s, "  kernel path  {}", cpu.kernel_path);
    let _ = writeln!(
        s,
        "  memory       {} total, {} available",
        mb(cpu.memory_total_mb),
        mb(cpu.memory_available_mb)
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "GPU adapters ({})", report.adapters.len());
    if let Some(note) = &report.gpu_note {
        let _ = writeln!(s, "  {note}");
    }
    for (i, a) in report.adapters.iter().enumerate() {
        let _ = writeln!(s, "  [{i}] {} ({:?}, {})", a.name, a.device_type, a.backend);
        let driver: Vec<&str> = [a.driver.as_str(), a.driver_info.as_str()]
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect();
        let driver = if driver.is_empty() {
            "unknown".to_owned()
        } else {
            driver.join(" ")
        };
        let _ = writeln!(
            s,
            "      ids {:#06x}:{:#06x}, driver {driver}",
            a.vendor_id, a.device_id
        );
        let feats = if a.features.is_empty() {
            "none".to_owned()
        } else {
            a.features.join(" ")
        };
        let _ = writeln!(s, "      features {feats}");
        let _ = writeln!(
            s,
            "      max buffer {} MiB, max storage binding {} MiB, workgroup {}x{}x{} ({} invocations)",
            a.limits.max_buffer_size >> 20,
            a.limits.max_storage_buffer_binding_size >> 20,
            a.limits.max_compute_workgroup_size_x,
            a.limits.max_compute_workgroup_size_y,
            a.limits.max_compute_workgroup_size_z,
            a.limits.max_compute_invocations_per_workgroup,
        );
        let vram = match (a.vram_mb, a.vram_source) {
            (Some(v), Some(src)) => format!("{v} MiB ({src:?})"),
            (Some(v), None) => format!("{v} MiB"),
            _ => "unknown".to_owned(),
        };
        let _ = writeln!(s, "      vram {vram}");
    }
    let _ = writeln!(s);
    match caps {
        Some(c) => {
            let supported: Vec<String> = c.supported.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "Capabilities (cpu): {} supported, {} native, {} MiB budget",
                supported.join(" "),
                c.native,
                c.vram_mb
            );
            let _ = writeln!(s, "  {caps_note}");
        }
        None => {
            let _ = writeln!(
                s,
                "Capabilities: none derived: {caps_note} (use --memory-mb)"
            );
        }
    }
    let t = &report.timings;
    let adapters = t
        .adapters_ms
        .map_or_else(String::new, |ms| format!(", adapters {ms:.1} ms"));
    let _ = writeln!(s, "Probed in: cpu {:.0} us{adapters}", t.cpu_us);
    s
}
