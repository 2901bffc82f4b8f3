//! Noise levels for the samplers.

use haagenti_adaptive_schedule::noise::NoiseSchedule;

use crate::{Result, RuntimeError};

/// Karras et al. (2022, eq. 5) noise levels, `n + 1` values descending to a final 0: the schedule
/// crate's [`NoiseSchedule::karras`], which documents the formula, with the runtime's error type.
///
/// # Errors
///
/// [`RuntimeError::Schedule`] when `n == 0`, a bound is not finite and positive, `sigma_min >
/// sigma_max` (or equal, for more than one step), or `rho` is not finite and positive.
///
/// # Examples
///
/// ```
/// let s = haagenti_adaptive_runtime::karras_sigmas(30, 0.002, 80.0, 7.0)?;
/// assert_eq!(s.len(), 31);
/// assert!((s[0] - 80.0).abs() < 1e-9 && (s[29] - 0.002).abs() < 1e-12 && s[30] == 0.0);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    Ok(NoiseSchedule::karras(sigma_min, sigma_max, rho)?.sigmas(n)?)
}

/// Checks that `sigmas` can drive a sampler: at least two values, all finite, non-negative and
/// strictly decreasing, with only the last allowed to be 0.
///
/// # Errors
///
/// [`RuntimeError::InvalidSigmas`] naming the first offending value.
pub fn validate_sigmas(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(RuntimeError::InvalidSigmas(format!(
            "need at least 2 noise levels, got {}",
            sigmas.len()
        )));
    }
    for (i, &s) in sigmas.iter().enumerate() {
        let last = i + 1 == sigmas.len();
        if !s.is_finite() || s < 0.0 || (s == 0.0 && !last) {
            return Err(RuntimeError::InvalidSigmas(format!("sigma {i} is {s}")));
        }
        if i > 0 && s >= sigmas[i - 1] {
            return Err(RuntimeError::InvalidSigmas(format!(
                "sigmas must decrease strictly: sigma {i} = {s} follows {}",
                sigmas[i - 1]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karras_endpoints_and_order() {
        let s = karras_sigmas(30, 0.002, 80.0, 7.0).unwrap();
        validate_sigmas(&s).unwrap();
        assert!((s[0] - 80.0).abs() < 1e-9);
        assert!((s[29] - 0.002).abs() < 1e-12);
        // Midpoint from the formula by hand: ((80^(1/7) + 0.002^(1/7)) / 2)^7 at n = 3.
        let m = karras_sigmas(3, 0.002, 80.0, 7.0).unwrap()[1];
        let expect = ((80f64.powf(1.0 / 7.0) + 0.002f64.powf(1.0 / 7.0)) / 2.0).powi(7);
        assert!((m - expect).abs() < 1e-12);
        assert_eq!(karras_sigmas(1, 0.002, 80.0, 7.0).unwrap(), vec![80.0, 0.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(karras_sigmas(0, 0.002, 80.0, 7.0).is_err());
        assert!(karras_sigmas(10, 1.0, 0.5, 7.0).is_err());
        assert!(karras_sigmas(10, f64::NAN, 80.0, 7.0).is_err());
        assert!(validate_sigmas(&[1.0]).is_err());
        assert!(validate_sigmas(&[1.0, 1.0]).is_err());
        assert!(validate_sigmas(&[1.0, 0.0, 0.0]).is_err());
        assert!(validate_sigmas(&[1.0, f64::NAN]).is_err());
        assert!(validate_sigmas(&[2.0, 1.0, 0.0]).is_ok());
    }
}
