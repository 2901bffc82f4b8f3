//! The `run` results as a text table, and as `report.md` with SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use haagenti_adaptive::Precision;
use haagenti_adaptive::runtime::{PACE_TOLERANCE, SIGNED_UNIT_RANGE, StepCosts, psnr_from_mse};
use plotters::prelude::*;

use crate::results::{ModelInfo, RunImages, RunOutput};

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn db(v: Option<f64>) -> String {
    v.map_or_else(
        || "inf".to_owned(),
        |v| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        },
    )
}

/// A time with its spread over the repeats: `0.074 ±0.004 s`.
fn spread(seconds: f64, spread: f64) -> String {
    format!("{seconds:.3} ±{spread:.3} s")
}

fn mib(bytes: usize) -> String {
    format!("{:.2}", bytes as f64 / (1024.0 * 1024.0))
}

/// The model in a few words.
fn model_line(out: &RunOutput) -> String {
    match &out.model {
        ModelInfo::Gmm(c) => format!("gmm k={} d={} s={}", c.k, c.d, c.s),
        ModelInfo::Terrain {
            difficulty, params, ..
        } => format!(
            "terrain consistency UNet ({:.2} M parameters) difficulty={difficulty}",
            *params as f64 / 1e6
        ),
    }
}

/// The noise levels, when there are few enough to read.
fn sigmas_line(out: &RunOutput) -> Option<String> {
    (out.sigmas.len() <= 9).then(|| {
        let v: Vec<String> = out.sigmas.iter().map(|s| format!("{s:.4}")).collect();
        v.join(", ")
    })
}

fn ssim(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// The results table and the calibration summary, as plain text.
pub(crate) fn text(out: &RunOutput) -> String {
    let mut s = String::new();
    let images = out.images.is_some();
    let _ = writeln!(
        s,
        "model {} | sampler {} | {} steps | batch {} | kernels {}",
        model_line(out),
        out.sampler,
        out.steps,
        out.batch,
        out.kernel_path
    );
    if let Some(line) = sigmas_line(out) {
        let _ = writeln!(s, "sigmas {line}");
    }
    if let ModelInfo::Terrain {
        promoted_layers, ..
    } = &out.model
        && !promoted_layers.is_empty()
    {
        let _ = writeln!(
            s,
            "at INT8/INT4 these run at a float precision (a block cannot split their rows): {}",
            promoted_layers.join(", ")
        );
    }
    let ms = |t: &StepCosts, f: &dyn Fn(Precision) -> Option<f64>| -> String {
        let parts: Vec<String> = t
            .precisions
            .iter()
            .map(|&p| format!("{p} {:.2} ms", f(p).unwrap_or(f64::NAN) * 1e3))
            .collect();
        parts.join(", ")
    };
    let c = &out.costs;
    let _ = writeln!(
        s,
        "measured cost of one step (mean over steps): {}",
        ms(c, &|p| c.mean_step(p))
    );
    let _ = writeln!(
        s,
        "extra cost of a step after another precision's: {}",
        ms(c, &|p| c.switch(p))
    );
    let _ = writeln!(s);
    let (last, lastw) = if images {
        ("SSIM", 7)
    } else {
        ("modes   PSNR agr", 17)
    };
    let _ = writeln!(
        s,
        "{:<15} {:>16} {:>8} {:>8} {:>9} {:>10} {:>8} {:>lastw$}",
        "schedule", "time s", "speedup", "predict", "pred err", "peak MiB", "PSNR dB", last
    );
    for r in &out.runs {
        let tail = if images {
            format!("{:>7}", ssim(r.ssim))
        } else {
            format!(
                "{:>6.0}% {:>9}",
                100.0 * r.mode_agreement,
                db(r.psnr_agreeing_db)
            )
        };
        let _ = writeln!(
            s,
            "{:<15} {:>16} {:>7.2}x {:>7.2}x {:>8.1}% {:>10} {:>8} {tail}",
            r.name,
            spread(r.seconds, r.seconds_spread),
            r.speedup,
            r.predicted_speedup,
            100.0 * (r.speedup / r.predicted_speedup - 1.0),
            mib(r.peak_weight_bytes),
            db(r.psnr_db),
        );
    }
    if let Some(note) = pace_note(out.cost_pace) {
        let _ = writeln!(s, "{note}");
    }
    if let Some(c) = &out.calibration {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "calibration ({:.1} s): budget {:.3e} (MSE vs FP32, PSNR {} dB{}; best preset on the calibration batch: {} at {:.3e}); calibrated measures {:.3e} there (solver bound {:.3e})",
            c.seconds,
            c.budget,
            db(finite(psnr_from_mse(c.budget, SIGNED_UNIT_RANGE))),
            if out.min_psnr.is_some() {
                ", from --min-psnr"
            } else {
                ""
            },
            c.best_preset.as_deref().unwrap_or("-"),
            c.best_preset_calibration_mse.unwrap_or(f64::NAN),
            c.calibration_mse,
            c.solver_bound_mse
        );
        for k in &c.checks {
            let tail = if images {
                format!("SSIM {}", ssim(k.quality.ssim))
            } else {
                format!("modes {:.0}%", 100.0 * k.quality.mode_agreement)
            };
            let _ = writeln!(
                s,
                "  {:<12} {:<12} time {}  predicted {:.2}x  PSNR {:>6} dB  MSE {:.3e}  {tail}",
                k.batch.to_string(),
                k.name,
                spread(k.seconds, k.seconds_spread),
                k.predicted_speedup,
                db(finite(k.quality.psnr_db)),
                k.quality.mse,
            );
        }
    }
    if let Some(claim) = &out.claim {
        let _ = writeln!(s);
        let _ = writeln!(s, "claim \"low precision is safe at high noise\": {claim}");
    }
    let _ = writeln!(s, "total {:.1} s", out.total_seconds);
    s
}

/// A warning when the FP32 run's pace against the cost table says the machine changed speed
/// between the phases (see [`StepCosts::pace`]).
fn pace_note(pace: f64) -> Option<String> {
    ((pace - 1.0).abs() > PACE_TOLERANCE).then(|| {
        format!(
            "note: FP32 ran in {pace:.2}x the time the cost table predicts for it: the machine's \
             speed changed between measuring costs and timing runs (another process, the clock), \
             so the predicted speedups compare two different machines; rerun on a quiet machine"
        )
    })
}

fn level(p: Precision) -> f64 {
    Precision::ALL.iter().position(|&q| q == p).unwrap_or(0) as f64
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn palette(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

fn precision_plot(path: &Path, out: &RunOutput) -> PlotResult {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let smin = out.sigmas[out.steps - 1].max(1e-4);
    let mut chart = ChartBuilder::on(&root)
        .caption("precision against sigma, per step", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((smin * 0.8..out.sigmas[0] * 1.25).log_scale(), -0.5f64..4.5)?;
    chart
        .configure_mesh()
        .x_desc("sigma (log)")
        .y_labels(5)
        .y_label_formatter(&|v| {
            Precision::ALL
                .get(v.round() as usize)
                .map_or(String::new(), |p| p.to_string())
        })
        .draw()?;
    let n = out.runs.len().max(1) as f64;
    for (i, r) in out.runs.iter().enumerate() {
        let off = (i as f64 - n / 2.0) * 0.04;
        let pts: Vec<(f64, f64)> = r
            .schedule
            .iter()
            .enumerate()
            .map(|(j, &p)| (out.sigmas[j], level(p) + off))
            .collect();
        let c = palette(i);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn sensitivity_plot(path: &Path, out: &RunOutput) -> PlotResult {
    let Some(c) = &out.calibration else {
        return Ok(());
    };
    let t = &c.sensitivity;
    let positive: Vec<f64> = t
        .errors
        .iter()
        .flatten()
        .copied()
        .filter(|&e| e > 0.0)
        .collect();
    let lo = positive
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(1e-12);
    let hi = positive.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let smin = t.sigmas[t.sigmas.len() - 1].max(1e-4);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "per-step sensitivity: final MSE vs FP32 with one step at p",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (smin * 0.8..t.sigmas[0] * 1.25).log_scale(),
            (lo * 0.5..hi * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("sigma of the step (log)")
        .y_desc("final MSE (log)")
        .draw()?;
    for (j, p) in t.precisions.iter().enumerate() {
        let pts: Vec<(f64, f64)> = t
            .sigmas
            .iter()
            .zip(&t.errors)
            .map(|(&s, row)| (s, row[j].max(lo)))
            .collect();
        let col = palette(j);
        chart
            .draw_series(LineSeries::new(pts, col.stroke_width(2)))?
            .label(p.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn speed_quality_plot(path: &Path, out: &RunOutput) -> PlotResult {
    // FP32 against itself has infinite PSNR; plot it at the top of the axis.
    let finite: Vec<f64> = out.runs.iter().filter_map(|r| r.psnr_db).collect();
    let top = finite.iter().copied().fold(0.0, f64::max) + 10.0;
    let bottom = finite.iter().copied().fold(top, f64::min) - 5.0;
    let smax = out.runs.iter().map(|r| r.speedup).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "speed against quality (FP32 at the top; bars: spread over repeats)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..smax, bottom..top + 2.0)?;
    chart
        .configure_mesh()
        .x_desc("measured speedup over FP32")
        .y_desc("PSNR vs FP32, dB")
        .draw()?;
    let fp32 = out.runs.first();
    let rel = |t: f64, s: f64| if t > 0.0 { s / t } else { 0.0 };
    let points: Vec<(f64, f64)> = out
        .runs
        .iter()
        .map(|r| (r.speedup, r.psnr_db.unwrap_or(top)))
        .collect();
    // The Pareto front: runs no other run beats on both speed and quality, fastest first.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[b].0.total_cmp(&points[a].0));
    let mut front = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best_y {
            best_y = points[i].1;
            front.push(points[i]);
        }
    }
    chart
        .draw_series(LineSeries::new(front, BLACK.mix(0.4).stroke_width(1)))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    for (i, r) in out.runs.iter().enumerate() {
        let (x, y) = points[i];
        let c = palette(i);
        // The speedup's spread: the relative spreads of this run's and FP32's times combined.
        let e = fp32.map_or(0.0, |f| {
            x * rel(r.seconds, r.seconds_spread).hypot(rel(f.seconds, f.seconds_spread))
        });
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x - e, y), (x + e, y)],
            c.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Circle::new((x, y), 5, c.filled())))?;
        chart.draw_series(std::iter::once(Text::new(
            r.name.clone(),
            (x, y),
            ("sans-serif", 13),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Makes sure the report can be written into `dir` before any work: creates it, and writes and
/// removes a probe file there, so that an unwritable folder fails in the first second of a run
/// rather than after it, with every figure lost.
pub(crate) fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".haagenti-report-probe.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

/// Writes `report.md`, `precision.svg`, `sensitivity.svg` and `speed_quality.svg` into `dir`,
/// and for image models `fp32.png`, `<schedule>.png` and `<schedule>_diff.png`.
pub(crate) fn write(dir: &Path, out: &RunOutput) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let plot = |name: &str, f: fn(&Path, &RunOutput) -> PlotResult| -> anyhow::Result<()> {
        f(&dir.join(name), out).map_err(|e| anyhow::anyhow!("plot {name}: {e}"))
    };
    plot("precision.svg", precision_plot)?;
    plot("speed_quality.svg", speed_quality_plot)?;
    if out.calibration.is_some() {
        plot("sensitivity.svg", sensitivity_plot)?;
    }
    let mut md = String::new();
    let images = out.images.is_some();
    let _ = writeln!(md, "# haagenti-adaptive run\n");
    match &out.model {
        ModelInfo::Gmm(m) => {
            let _ = writeln!(
                md,
                "Reference model: exact denoiser of a Gaussian mixture (k = {}, d = {}, s = {}), sampler {}, {} Karras steps \
                 (sigma 80 to 0.002), batch {}, kernels `{}`. Times are measured step compute (weight quantization excluded \
                 and listed separately); predicted speedups come from the measured per-call costs.\n",
                m.k, m.d, m.s, out.sampler, out.steps, out.batch, out.kernel_path
            );
        }
        ModelInfo::Terrain {
            difficulty,
            params,
            promoted_layers,
            ..
        } => {
            let _ = writeln!(
                md,
                "Model: the pretrained terrain consistency UNet ({:.2} M Conv/Gemm parameters, 128x128 height maps, \
                 difficulty {difficulty}), every Conv and Gemm through our kernels at the step's precision; sampler {}, \
                 {} steps at sigma {}, batch {}, kernels `{}`. Quality against the FP32 run from the same noise: PSNR \
                 over the data range 2 (the network clips to [-1, 1]) and mean SSIM (11x11 gaussian window, sigma 1.5). \
                 Times are measured step compute (weight quantization excluded and listed separately); predicted \
                 speedups come from the measured per-step costs. The package's own generator samples this network \
                 in one step (`--steps 1`); with more, each re-noised evaluation leaves noise it does not remove, which \
                 the height maps show (quality here is against FP32 from the same noise).\n",
                *params as f64 / 1e6,
                out.sampler,
                out.steps,
                sigmas_line(out).unwrap_or_default(),
                out.batch,
                out.kernel_path
            );
            if !promoted_layers.is_empty() {
                let _ = writeln!(
                    md,
                    "At INT8 and INT4 these layers run at a float precision, a block format being unable to split \
                     their rows: {}.\n",
                    promoted_layers.join(", ")
                );
            }
        }
    }
    if images {
        let _ = writeln!(
            md,
            "| schedule | time s | load s | speedup | predicted | peak weight MiB | PSNR dB | SSIM |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    } else {
        let _ = writeln!(
            md,
            "| schedule | time s | load s | speedup | predicted | peak weight MiB | PSNR dB | mode agreement | PSNR agreeing dB |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for r in &out.runs {
        let tail = if images {
            ssim(r.ssim)
        } else {
            format!(
                "{:.0}% | {}",
                100.0 * r.mode_agreement,
                db(r.psnr_agreeing_db)
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.2}x | {:.2}x | {} | {} | {tail} |",
            r.name,
            spread(r.seconds, r.seconds_spread),
            r.load_seconds,
            r.speedup,
            r.predicted_speedup,
            mib(r.peak_weight_bytes),
            db(r.psnr_db),
        );
    }
    let _ = writeln!(
        md,
        "\n![precision against sigma](precision.svg)\n\n![speed against quality](speed_quality.svg)\n"
    );
    if let Some(c) = &out.calibration {
        let _ = writeln!(md, "## Calibration\n");
        let _ = writeln!(
            md,
            "Budget {:.3e} (MSE against FP32 on the calibration batch); best seed preset there: {} \
             (MSE {:.3e}); the calibrated schedule, the cheapest of the solver's that meets the \
             budget there, measures {:.3e} (solver bound {:.3e}); {:.1} s.\n",
            c.budget,
            c.best_preset.as_deref().unwrap_or("-"),
            c.best_preset_calibration_mse.unwrap_or(f64::NAN),
            c.calibration_mse,
            c.solver_bound_mse,
            c.seconds
        );
        let last = if images { "SSIM" } else { "mode agreement" };
        let _ = writeln!(
            md,
            "| batch | schedule | time s | predicted speedup | PSNR dB | MSE | {last} |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for k in &c.checks {
            let tail = if images {
                ssim(k.quality.ssim)
            } else {
                format!("{:.0}%", 100.0 * k.quality.mode_agreement)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2}x | {} | {:.3e} | {tail} |",
                k.batch,
                k.name,
                spread(k.seconds, k.seconds_spread),
                k.predicted_speedup,
                db(finite(k.quality.psnr_db)),
                k.quality.mse,
            );
        }
        let _ = writeln!(md, "\n![per-step sensitivity](sensitivity.svg)\n");
    }
    if let Some(note) = pace_note(out.cost_pace) {
        let _ = writeln!(md, "{note}.\n");
    }
    if let Some(claim) = &out.claim {
        let _ = writeln!(
            md,
            "## The claim \"low precision is safe at high noise\"\n\n{claim}.\n"
        );
    }
    if let Some(im) = &out.images {
        pictures(dir, im, &mut md)?;
    }
    let _ = writeln!(md, "```text\n{}```", text(out));
    crate::png::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// A batch of images side by side (`shape.width * batch` wide), each value mapped by `grey`.
fn strip(im: &RunImages, values: &[f32], grey: impl Fn(f32) -> u8) -> (usize, usize, Vec<u8>) {
    let (w, h) = (im.shape.width, im.shape.height);
    let batch = values.len() / im.shape.pixels().max(1);
    let width = w * batch;
    let mut px = vec![0u8; width * h];
    for b in 0..batch {
        for r in 0..h {
            for c in 0..w {
                px[r * width + b * w + c] = grey(values[b * w * h + r * w + c]);
            }
        }
    }
    (width, h, px)
}

/// A file name for a schedule name (names are ours: letters, digits and dashes).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The height maps as PNG (black -1, white 1) and each run's difference from FP32 (mid grey 0,
/// black and white at minus and plus that run's largest difference, named in the table).
fn pictures(dir: &Path, im: &RunImages, md: &mut String) -> anyhow::Result<()> {
    let height = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    let (w, h, px) = strip(im, &im.reference, height);
    crate::png::write_grey(&dir.join("fp32.png"), w, h, &px)?;
    let _ = writeln!(
        md,
        "## Height maps\n\nThe FP32 batch (black -1, white 1):\n\n![fp32](fp32.png)\n\n\
         Each schedule's batch from the same noise, and its difference from FP32 (mid grey 0; black \
         and white at minus and plus the largest difference, given beside it):\n\n\
         | schedule | height maps | difference | largest difference |\n|---|---|---|---:|"
    );
    for (name, samples) in im.names.iter().zip(&im.samples) {
        if name == "fp32" {
            continue;
        }
        let stem = file_stem(name);
        let (w, h, px) = strip(im, samples, height);
        crate::png::write_grey(&dir.join(format!("{stem}.png")), w, h, &px)?;
        let diff: Vec<f32> = samples
            .iter()
            .zip(&im.reference)
            .map(|(a, b)| a - b)
            .collect();
        let peak = diff.iter().fold(0f32, |m, d| m.max(d.abs()));
        let scale = if peak > 0.0 { peak } else { 1.0 };
        let (w, h, px) = strip(im, &diff, |d| {
            ((d / scale).clamp(-1.0, 1.0) * 127.5 + 127.5).round() as u8
        });
        crate::png::write_grey(&dir.join(format!("{stem}_diff.png")), w, h, &px)?;
        let _ = writeln!(
            md,
            "| {name} | ![{name}]({stem}.png) | ![{name} - fp32]({stem}_diff.png) | {peak:.3e} |"
        );
    }
    let _ = writeln!(md);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pace_note;

    #[test]
    fn a_pace_outside_the_tolerance_is_reported() {
        assert_eq!(pace_note(1.0), None);
        assert_eq!(pace_note(1.14), None);
        assert_eq!(pace_note(0.86), None);
        let note = pace_note(0.61).expect("a 0.61 pace is a changed machine");
        assert!(note.contains("0.61x"), "{note}");
        assert!(pace_note(1.2).is_some());
    }
}
