//! `haagenti-adaptive plan`: generate a precision schedule, plan its transitions, and print both.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use haagenti_adaptive::core::{PrecisionCapabilities, TransitionStrategy};
use haagenti_adaptive_schedule::{
    PrecisionProfile, PrecisionSchedule, ProfilePreset, ScheduleConfig,
};
use haagenti_adaptive_transition::{
    DEFAULT_MIN_GAP, PrecisionTransition, TransitionPlan, TransitionPlanner,
};
use serde::Serialize;

/// Arguments of `haagenti-adaptive plan`.
///
/// Values are parsed here rather than by clap so that a bad one is a one-line error.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// Preset profile: performance, balanced, quality, low-vram, conservative or noise-adaptive.
    #[arg(long, default_value = "balanced")]
    preset: String,
    /// A custom profile (JSON, as `PrecisionProfile` serialises) replacing the preset.
    #[arg(long, value_name = "FILE.json")]
    profile: Option<PathBuf>,
    /// Number of denoising steps.
    #[arg(long, default_value = "30")]
    steps: String,
    /// Transition strategy: immediate, gradual:N or step-aware.
    #[arg(long, default_value = "immediate")]
    strategy: String,
    /// Device capabilities: modern-gpu, legacy-gpu or cpu.
    #[arg(long, default_value = "modern-gpu")]
    capabilities: String,
    /// Memory available for weights, in MiB.
    #[arg(long, default_value = "8192")]
    vram_mb: String,
    /// Lowest average quality accepted (seed constants, relative to FP32), in [0, 1].
    #[arg(long, default_value = "0.9")]
    min_quality: String,
    /// Fail when a zone asks for a precision with nothing supported at or above it.
    #[arg(long)]
    strict: bool,
    /// Minimum steps between two precision changes; shorter runs merge upwards.
    #[arg(long, default_value_t = DEFAULT_MIN_GAP.to_string())]
    min_gap: String,
    /// Model size in parameters (e.g. 2600000000, 2.6e9, 2.6B, 860M): checks memory.
    #[arg(long)]
    model_params: Option<String>,
    /// Print the schedule and plan as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The JSON output: the schedule's fields at the top level, the plan beside them.
#[derive(Serialize)]
struct PlanOutput<'a> {
    #[serde(flatten)]
    schedule: &'a PrecisionSchedule,
    plan: PlanSummary<'a>,
}

#[derive(Serialize)]
struct PlanSummary<'a> {
    transitions: &'a [PrecisionTransition],
    merged_zones: u32,
    vram_fallbacks: u32,
    min_gap: u32,
    vram_mb: u64,
    model_params: Option<u64>,
    peak_vram_mb: Option<u64>,
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("--{flag} {value:?}: {e}"))
}

/// Parses a parameter count: an integer, a float in e-notation, or a number with a K, M, B (or G)
/// or T suffix.
fn parse_params(value: &str) -> anyhow::Result<u64> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Ok(n);
    }
    let (number, scale) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'B' | 'G' => 1e9,
                'T' => 1e12,
                _ => bail!("--model-params {value:?}: unknown suffix {c:?} (use K, M, B or T)"),
            };
            (&v[..i], scale)
        }
        _ => (v, 1.0),
    };
    let x: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("--model-params {value:?} is not a number"))?;
    let n = x * scale;
    if !(n.is_finite() && n >= 0.0 && n < u64::MAX as f64) {
        bail!("--model-params {value:?} is out of range");
    }
    Ok(n.round() as u64)
}

fn capabilities(name: &str, vram_mb: u64) -> anyhow::Result<PrecisionCapabilities> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "modern-gpu" => PrecisionCapabilities::modern_gpu(vram_mb),
        "legacy-gpu" => PrecisionCapabilities::legacy_gpu(vram_mb),
        "cpu" => PrecisionCapabilities::cpu(vram_mb),
        _ => bail!("--capabilities {name:?}: expected modern-gpu, legacy-gpu or cpu"),
    })
}

pub(crate) fn run(args: PlanArgs) -> anyhow::Result<()> {
    let preset: ProfilePreset = parse("preset", &args.preset)?;
    let steps: u32 = parse("steps", &args.steps)?;
    let strategy: TransitionStrategy = parse("strategy", &args.strategy)?;
    let vram_mb: u64 = parse("vram-mb", &args.vram_mb)?;
    let min_quality: f32 = parse("min-quality", &args.min_quality)?;
    let min_gap: u32 = parse("min-gap", &args.min_gap)?;
    let caps = capabilities(&args.capabilities, vram_mb)?;
    let model_params = args.model_params.as_deref().map(parse_params).transpose()?;

    let mut config = ScheduleConfig::with_preset(preset)
        .steps(steps)
        .capabilities(caps)
        .min_quality(min_quality)
        .strategy(strategy)
        .strict(args.strict);
    if let Some(path) = &args.profile {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        let profile: PrecisionProfile = serde_json::from_str(&text)
            .with_context(|| format!("parsing profile {}", path.display()))?;
        config = config.custom_profile(profile);
    }
    let schedule = PrecisionSchedule::generate(config)?;
    let mut planner = TransitionPlanner::new(vram_mb).with_min_gap(min_gap);
    if let Some(params) = model_params {
        planner = planner.with_model_params(params);
    }
    let plan = planner.plan_schedule(&schedule)?;

    if args.json {
        let out = PlanOutput {
            schedule: &plan.schedule,
            plan: PlanSummary {
                transitions: &plan.transitions,
                merged_zones: plan.merged_zones,
                vram_fallbacks: plan.vram_fallbacks,
                min_gap: plan.min_gap,
                vram_mb: plan.vram_mb,
                model_params: plan.model_params,
                peak_vram_mb: plan.peak_vram_mb,
            },
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&plan, &args.capabilities));
    }
    Ok(())
}

/// The human-readable report: a header, one row a step, the timeline and the totals.
fn table(plan: &TransitionPlan, capabilities: &str) -> String {
    let s = &plan.schedule;
    let params = plan.model_params;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "profile {}, {} steps, {} ({} MiB), strategy {}, min gap {}",
        s.profile_name,
        s.steps.len(),
        capabilities,
        plan.vram_mb,
        s.config.transition_strategy,
        plan.min_gap
    );
    let mem_head = if params.is_some() {
        "weights MiB"
    } else {
        "memory/FP32"
    };
    let _ = writeln!(
        out,
        "{:>6}  {:<9}  {:<14}  {:>5}  {:>11}  {:>6}",
        "step", "precision", "change", "blend", mem_head, "speed"
    );
    let mut from = s.steps[0].precision;
    for st in &s.steps {
        let change = if st.is_transition {
            if let Some(t) = s.transitions.iter().find(|t| t.0 == st.step) {
                from = t.1;
            }
            format!("{} -> {}", from, st.precision)
        } else {
            String::new()
        };
        let blend = st
            .blend_factor
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.2}"));
        let memory = match params {
            Some(p) => {
                let own = haagenti_adaptive::core::weight_mb(p, st.precision);
                let other = if st.blend_factor.is_some() {
                    haagenti_adaptive::core::weight_mb(p, from)
                } else {
                    0
                };
                (own + other).to_string()
            }
            None => format!("{:.3}", st.vram_ratio),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<9}  {:<14}  {:>5}  {:>11}  {:>5.2}x",
            st.step, st.precision, change, blend, memory, st.speedup_factor
        );
    }
    let _ = writeln!(out, "timeline: {}", s.format_timeline());
    let _ = writeln!(
        out,
        "estimated speedup {:.2}x over FP32 (total FP32 time / scheduled time), mean memory {:.3} \
         of FP32 (peak {:.3}), mean quality {:.3}; seed constants, not measurements",
        s.estimated_speedup, s.avg_vram_ratio, s.peak_vram_ratio, s.avg_quality_factor
    );
    if let Some(peak) = plan.peak_vram_mb {
        let _ = writeln!(out, "peak weight memory {peak} MiB of {} MiB", plan.vram_mb);
    }
    if plan.merged_zones > 0 || plan.vram_fallbacks > 0 {
        let _ = writeln!(
            out,
            "{} short run(s) merged upwards (min gap {}), {} blend(s) made immediate for memory",
            plan.merged_zones, plan.min_gap, plan.vram_fallbacks
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_accept_suffixes_and_reject_garbage() {
        assert_eq!(parse_params("2600000000").unwrap(), 2_600_000_000);
        assert_eq!(parse_params("2.6e9").unwrap(), 2_600_000_000);
        assert_eq!(parse_params("2.6B").unwrap(), 2_600_000_000);
        assert_eq!(parse_params("860m").unwrap(), 860_000_000);
        assert!(parse_params("12X").is_err());
        assert!(parse_params("-5").is_err());
        assert!(parse_params("lots").is_err());
        assert!(parse_params("1e30").is_err());
    }
}
