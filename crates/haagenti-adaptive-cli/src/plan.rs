//! `haagenti-adaptive plan`: generate a precision schedule (from a preset or profile, or by the
//! error-budget solver from a measured error table), plan its transitions, and print both.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use haagenti_adaptive::core::{PrecisionCapabilities, TransitionStrategy};
use haagenti_adaptive::schedule::noise::{NoiseProfile, NoiseSchedule};
use haagenti_adaptive::schedule::solver::{ErrorBound, ErrorTable, SolveOptions};
use haagenti_adaptive::schedule::{
    EstimateSource, PrecisionProfile, PrecisionSchedule, ProfilePreset, ScheduleConfig,
};
use haagenti_adaptive::transition::{
    DEFAULT_MIN_GAP, PrecisionTransition, TransitionPlan, TransitionPlanner,
};
use serde::Serialize;

/// Arguments of `haagenti-adaptive plan`.
///
/// Values are parsed here rather than by clap so that a bad one is a one-line error.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// Preset profile: performance, balanced, quality, low-vram, conservative or noise-adaptive.
    ///
    /// noise-adaptive picks precisions by noise level (INT4 while sigma > 10, INT8 while
    /// sigma > 1, FP16 below); without --noise it uses EDM's Karras schedule
    /// (karras:sigma_min=0.002,sigma_max=80,rho=7), which the output records.
    #[arg(long, default_value = "balanced")]
    preset: String,
    /// A custom profile (JSON, as `PrecisionProfile` serialises) replacing the preset. Profile,
    /// noise-profile and error-table files are regular files of at most 16 MiB.
    #[arg(long, value_name = "FILE.json")]
    profile: Option<PathBuf>,
    /// A custom noise-level profile (JSON, as `NoiseProfile` serialises: name, zones with
    /// start_log_snr, end_log_snr, precision) replacing the preset; needs --noise.
    #[arg(long, value_name = "FILE.json")]
    noise_profile: Option<PathBuf>,
    /// The sampler's noise schedule; each step then shows its sigma.
    ///
    /// SPEC is one of karras:sigma_min=A,sigma_max=B,rho=R;
    /// scaled-linear[:spacing=linspace|leading|trailing];
    /// linear[:beta_start=..,beta_end=..,train_steps=..]; cosine; flow:shift=S; flux:mu=M or
    /// flux:tokens=T; sigmas:s0,s1,...
    #[arg(long, value_name = "SPEC")]
    noise: Option<String>,
    /// Number of denoising steps, at most 100 000 [default: 30; with --error-table, the table's
    /// rows].
    #[arg(long)]
    steps: Option<String>,
    /// Transition strategy: immediate, gradual:N or step-aware.
    #[arg(long, default_value = "immediate")]
    strategy: String,
    /// Device capabilities: modern-gpu, legacy-gpu, cpu (each with --vram-mb), or probe (this
    /// machine's CPU as probed, with its available memory).
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
    /// Minimum steps between two precision changes; shorter runs merge upwards (with
    /// --error-table the solver keeps this gap itself).
    #[arg(long, default_value_t = DEFAULT_MIN_GAP.to_string())]
    min_gap: String,
    /// Solve for the cheapest schedule within --budget from measured errors and costs.
    ///
    /// The file is JSON: {"precisions": ["INT4", "INT8", "FP16", "FP32"], "errors": [[e00, e01,
    /// e02, e03], ...], "costs": [c0, c1, c2, c3], "sigmas": [s0, s1, ...]}. errors[i][p] is
    /// the measured error of step i run at precisions[p] (one row a step, one column a
    /// precision), costs[p] the cost of one step at precisions[p] (e.g. seconds a step), and
    /// the optional sigmas the noise level of each step (strictly decreasing). Every value is
    /// a finite number >= 0. FP32 must be among the precisions: the speedup is FP32 cost over
    /// scheduled cost. The device's --capabilities limit the candidates. The solver takes at
    /// most 2^24 steps x resident precisions x min(min-gap, steps) states (1 000 steps of five
    /// precisions fit with any gap); with a total budget past 2^23 partial schedules
    /// it keeps the best spread of them, so memory stays linear in the steps.
    #[arg(long, value_name = "FILE.json")]
    error_table: Option<PathBuf>,
    /// The error bound for --error-table: the total error sum_i e[i][p_i] <= X, or with
    /// --per-step every step's e[i][p_i] <= X.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    budget: Option<String>,
    /// Make --budget a bound on every step's error instead of the total.
    #[arg(long)]
    per_step: bool,
    /// With --error-table: the most distinct precisions resident at once (each is a copy of
    /// the weights).
    #[arg(long, value_name = "R", default_value = "5")]
    max_resident: String,
    /// Model size in parameters (e.g. 2600000000, 2.6e9, 2.6B, 860M; the terrain UNet's Conv and
    /// Gemm weights are 10.4M): checks memory. Also spelled --params.
    #[arg(long, visible_alias = "params")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    error_bound: Option<&'a ErrorBound>,
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
        "cpu" => PrecisionCapabilities::cpu_with_kernels(vram_mb),
        "probe" => haagenti_adaptive::probe::probe_capabilities()
            .context("--capabilities probe: probing this machine")?,
        _ => bail!("--capabilities {name:?}: expected modern-gpu, legacy-gpu, cpu or probe"),
    })
}

/// The largest profile, noise-profile or error-table file read: 16 MiB, a thousand times the
/// largest one a real schedule needs; a FIFO or a device (`/dev/zero`) is refused.
const JSON_FILE_MAX_BYTES: u64 = 16 << 20;

fn read_json<T: serde::de::DeserializeOwned>(what: &str, path: &Path) -> anyhow::Result<T> {
    let text = haagenti_adaptive::kernels::io::read_capped_to_string(path, JSON_FILE_MAX_BYTES)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        // JSON has no NaN or infinities; Python's json module writes them anyway.
        let hint = if e.is_syntax() && ["NaN", "Infinity"].iter().any(|w| text.contains(w)) {
            " (JSON has no NaN or Infinity: every value must be a finite number)"
        } else {
            ""
        };
        anyhow::anyhow!("parsing {what} {}: {e}{hint}", path.display())
    })
}

/// A sigma for the table: 5 decimals, or 4 significant digits when that would hide it.
fn sigma_text(v: f64) -> String {
    if v == 0.0 || v >= 0.001 {
        format!("{v:.5}")
    } else {
        format!("{v:.3e}")
    }
}

pub(crate) fn run(args: PlanArgs) -> anyhow::Result<()> {
    let preset: ProfilePreset = parse("preset", &args.preset)?;
    let steps: Option<u32> = args
        .steps
        .as_deref()
        .map(|s| parse("steps", s))
        .transpose()?;
    let strategy: TransitionStrategy = parse("strategy", &args.strategy)?;
    let vram_mb: u64 = parse("vram-mb", &args.vram_mb)?;
    let min_quality: f32 = parse("min-quality", &args.min_quality)?;
    let min_gap: u32 = parse("min-gap", &args.min_gap)?;
    let caps = capabilities(&args.capabilities, vram_mb)?;
    let model_params = args.model_params.as_deref().map(parse_params).transpose()?;

    let noise: Option<NoiseSchedule> = args
        .noise
        .as_deref()
        .map(|s| parse("noise", s))
        .transpose()?;
    let max_resident: usize = parse("max-resident", &args.max_resident)?;
    if max_resident == 0 {
        bail!("--max-resident 0: at least 1 precision must be resident");
    }

    let mut config = ScheduleConfig::with_preset(preset)
        .steps(steps.unwrap_or(30))
        .capabilities(caps.clone())
        .min_quality(min_quality)
        .strategy(strategy)
        .strict(args.strict);
    if let Some(noise) = noise {
        config = config.noise(noise);
    }
    if let Some(path) = &args.profile {
        let profile: PrecisionProfile = read_json("profile", path)?;
        config = config.custom_profile(profile);
    }
    if let Some(path) = &args.noise_profile {
        let profile: NoiseProfile = read_json("noise profile", path)?;
        config = config.custom_noise_profile(profile);
    }
    let bound = match (&args.error_table, &args.budget) {
        (Some(_), Some(b)) => {
            let x: f64 = parse("budget", b)?;
            if !(x.is_finite() && x >= 0.0) {
                bail!("--budget {b:?} is not a finite number >= 0");
            }
            Some(if args.per_step {
                ErrorBound::MaxPerStep(x)
            } else {
                ErrorBound::Total(x)
            })
        }
        (Some(_), None) => bail!("--error-table needs --budget X"),
        (None, Some(_)) => bail!("--budget needs --error-table FILE.json"),
        (None, None) => {
            if args.per_step {
                bail!("--per-step needs --error-table FILE.json and --budget X");
            }
            None
        }
    };
    let schedule = match (&args.error_table, &bound) {
        (Some(path), Some(bound)) => {
            let table: ErrorTable = read_json("error table", path)?;
            if let Some(n) = steps
                && n as usize != table.steps()
            {
                bail!(
                    "--steps {n} disagrees with the error table {}, which has {} steps",
                    path.display(),
                    table.steps()
                );
            }
            let options = SolveOptions::for_capabilities(&caps)
                .min_gap(min_gap as usize)
                .max_resident(max_resident);
            PrecisionSchedule::solve(config.steps(table.steps() as u32), table, &options, bound)
                .with_context(|| format!("solving error table {}", path.display()))?
        }
        _ => PrecisionSchedule::generate(config)?,
    };
    let mut planner = TransitionPlanner::new(vram_mb).with_min_gap(min_gap);
    if let Some(params) = model_params {
        planner = planner.with_model_params(params);
    }
    let plan = planner.plan_schedule(&schedule)?;

    if args.json {
        let out = PlanOutput {
            schedule: &plan.schedule,
            plan: PlanSummary {
                error_bound: bound.as_ref(),
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
        print!("{}", table(&plan, &args.capabilities, bound.as_ref()));
    }
    Ok(())
}

/// The human-readable report: a header, one row a step, the timeline and the totals.
fn table(plan: &TransitionPlan, capabilities: &str, bound: Option<&ErrorBound>) -> String {
    let s = &plan.schedule;
    let params = plan.model_params;
    let with_sigma = s.steps.iter().any(|st| st.sigma.is_some());
    let with_error = s.steps.iter().any(|st| st.error.is_some());
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
    if let Some(noise) = &s.config.noise {
        let _ = writeln!(out, "noise schedule {noise}");
    }
    let mem_head = if params.is_some() {
        "weights MiB"
    } else {
        "memory/FP32"
    };
    let _ = write!(
        out,
        "{:>6}  {:<9}  {:<14}  {:>5}  {:>11}  {:>6}",
        "step", "precision", "change", "blend", mem_head, "speed"
    );
    if with_sigma {
        let _ = write!(out, "  {:>11}", "sigma");
    }
    if with_error {
        let _ = write!(out, "  {:>11}", "error");
    }
    out.push('\n');
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
        let _ = write!(
            out,
            "{:>6}  {:<9}  {:<14}  {:>5}  {:>11}  {:>5.2}x",
            st.step, st.precision, change, blend, memory, st.speedup_factor
        );
        if with_sigma {
            let sigma = st.sigma.map_or_else(|| "-".to_owned(), sigma_text);
            let _ = write!(out, "  {sigma:>11}");
        }
        if with_error {
            let error = st
                .error
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.6}"));
            let _ = write!(out, "  {error:>11}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "timeline: {}", s.format_runs());
    match (s.estimate_source, s.predicted_cost, s.predicted_error) {
        (EstimateSource::Measured, Some(cost), Some(error)) => {
            let bound = match bound {
                Some(ErrorBound::Total(b)) => format!(" (budget: total error <= {b})"),
                Some(ErrorBound::MaxPerStep(t)) => format!(" (budget: every step's error <= {t})"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "predicted cost {cost:.6} (sum of measured step costs), predicted error \
                 {error:.6}{bound}; estimated speedup {:.2}x over FP32 (measured costs), mean \
                 memory {:.3} of FP32 (peak {:.3})",
                s.estimated_speedup, s.avg_vram_ratio, s.peak_vram_ratio
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "estimated speedup {:.2}x over FP32 (total FP32 time / scheduled time), mean \
                 memory {:.3} of FP32 (peak {:.3}), mean quality {:.3}; seed constants, not \
                 measurements",
                s.estimated_speedup, s.avg_vram_ratio, s.peak_vram_ratio, s.avg_quality_factor
            );
        }
    }
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

    proptest::proptest! {
        /// Any text is a count or an error, never a panic (a multi-byte last character, `NaN`,
        /// `inf`, a lone suffix).
        #[test]
        fn any_params_text_parses_or_fails(text in "\\PC{0,24}|[0-9.eE+-]{0,12}[kKmMbBgGtTx\u{e9}]?") {
            if let Ok(n) = parse_params(&text) {
                proptest::prop_assert!(n < u64::MAX);
            }
        }

        /// Every integer round-trips; a whole number with a suffix is that number times the
        /// suffix's power of ten, with or without spaces around it.
        #[test]
        fn params_round_trip(n in proptest::prelude::any::<u64>(), k in 0u64..1_000_000, suffix in 0usize..5) {
            proptest::prop_assert_eq!(parse_params(&n.to_string()).unwrap(), n);
            let (c, scale) = [('K', 1_000u64), ('m', 1_000_000), ('B', 1_000_000_000), ('g', 1_000_000_000), ('T', 1_000_000_000_000)][suffix];
            proptest::prop_assert_eq!(parse_params(&format!(" {k}{c} ")).unwrap(), k * scale);
        }
    }
}
