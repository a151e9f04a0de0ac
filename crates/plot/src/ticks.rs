//! "Nice" axis ticks and compact tick labels.

/// Tick step mantissas, tried in this order within each power of ten.
/// Expressed as `(q, shift)`: the step is `q × 10^(e + shift)`, so that 2.5
/// stays an integer (`25 × 10^(e-1)`) and tick values can be computed exactly.
const MANTISSAS: [(i64, i32); 4] = [(1, 0), (2, 0), (25, -1), (5, 0)];

/// Evenly spaced "nice" tick values inside `[lo, hi]` (both inclusive).
///
/// The step is the smallest value of the form `{1, 2, 2.5, 5} × 10^k` that
/// yields at most `max_ticks` ticks inside the range; every tick is an
/// integer multiple of the step, so `0` is a tick whenever it is in range.
/// Tick values are computed as `integer / 10^p` (or `integer × 10^p`), so for
/// example `0.3` comes out as exactly the literal `0.3`.
///
/// Returns an empty vector when `max_ticks == 0` or a bound is not finite,
/// and `[lo]` when `lo == hi`. Bounds given in the wrong order are swapped.
///
/// ```
/// assert_eq!(atelier_plot::nice_ticks(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
/// assert_eq!(atelier_plot::nice_ticks(0.0, 5000.0, 6), vec![0.0, 1e3, 2e3, 3e3, 4e3, 5e3]);
/// ```
pub fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    nice_ticks_with_step(lo, hi, max_ticks).0
}

/// [`nice_ticks`] plus the chosen step (0 when there is no step).
pub(crate) fn nice_ticks_with_step(lo: f64, hi: f64, max_ticks: usize) -> (Vec<f64>, f64) {
    if max_ticks == 0 || !lo.is_finite() || !hi.is_finite() {
        return (Vec::new(), 0.0);
    }
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = hi - lo;
    if span <= 0.0 || !span.is_finite() {
        return (vec![lo], 0.0);
    }
    let raw = span / (max_ticks.saturating_sub(1).max(1)) as f64;
    // Start one decade below the lower bound on the step and walk upwards.
    let mut e = raw.log10().floor() as i32 - 1;
    for _ in 0..8 {
        for &(q, shift) in &MANTISSAS {
            let p = e + shift;
            let step = q as f64 * pow10(p);
            if !(step > 0.0 && step.is_finite()) {
                continue;
            }
            let kmin_f = (lo / step - 1e-9).ceil();
            let kmax_f = (hi / step + 1e-9).floor();
            // Ill-conditioned (range tiny relative to its offset): give up on
            // exact multiples and return the bounds themselves.
            if kmin_f.abs() > 1e15 || kmax_f.abs() > 1e15 {
                return (vec![lo, hi], span);
            }
            let count = kmax_f - kmin_f + 1.0;
            if count <= max_ticks as f64 {
                let (kmin, kmax) = (kmin_f as i64, kmax_f as i64);
                let ticks = (kmin..=kmax).map(|k| scaled(k * q, p)).collect();
                return (ticks, step);
            }
        }
        e += 1;
    }
    (vec![lo, hi], span)
}

/// `n × 10^p`, correctly rounded for the usual ranges of `n` and `p`.
fn scaled(n: i64, p: i32) -> f64 {
    let n = n as f64;
    if p >= 0 {
        n * pow10(p)
    } else {
        n / pow10(-p)
    }
}

/// `10^p`; exact for `|p| <= 22`.
fn pow10(p: i32) -> f64 {
    if (0..=22).contains(&p) {
        // Exact: every power of ten up to 1e22 is representable.
        let mut v = 1.0f64;
        for _ in 0..p {
            v *= 10.0;
        }
        v
    } else {
        10f64.powi(p)
    }
}

/// Ticks for a log10 axis whose visible range is `[lo_e, hi_e]` in exponent
/// space. Returns `(value, label)` pairs; positions are `log10(value)`.
///
/// Whole decades (`10^k`, thinned when there are more than `max_ticks`) when
/// at least four fit; otherwise `{1, 2, 5} × 10^k` when those fit; otherwise
/// two decades if there are two; otherwise plain linear nice ticks.
pub(crate) fn log_ticks(lo_e: f64, hi_e: f64, max_ticks: usize) -> Vec<(f64, String)> {
    if !lo_e.is_finite() || !hi_e.is_finite() || max_ticks == 0 {
        return Vec::new();
    }
    let (lo_e, hi_e) = if lo_e <= hi_e {
        (lo_e, hi_e)
    } else {
        (hi_e, lo_e)
    };
    let eps = 1e-9;
    let kmin = (lo_e - eps).ceil();
    let kmax = (hi_e + eps).floor();
    // Whole decades, thinned by nice_ticks when there are too many.
    let decades: Vec<(f64, String)> = if kmax - kmin >= 1.0 {
        nice_ticks(kmin, kmax, max_ticks)
            .into_iter()
            .filter(|k| k.fract() == 0.0 && k.abs() < 400.0)
            .map(|k| {
                let v = scaled(1, k as i32);
                (v, format_tick(v, v))
            })
            .collect()
    } else {
        Vec::new()
    };
    if decades.len() >= 4 {
        return decades;
    }
    if hi_e - lo_e < 4.0 {
        let mut sub = Vec::new();
        let start = (lo_e - eps).floor() as i64;
        let end = (hi_e + eps).ceil() as i64;
        for k in start..=end {
            for m in [1i64, 2, 5] {
                let v = scaled(m, k as i32);
                let e = v.log10();
                if e >= lo_e - eps && e <= hi_e + eps {
                    sub.push((v, format_tick(v, v)));
                }
            }
        }
        if sub.len() >= 2 && sub.len() <= max_ticks {
            return sub;
        }
    }
    if decades.len() >= 2 {
        return decades;
    }
    let (lo, hi) = (10f64.powf(lo_e), 10f64.powf(hi_e));
    let (ticks, step) = nice_ticks_with_step(lo, hi, max_ticks);
    ticks
        .into_iter()
        .filter(|&v| v > 0.0)
        .map(|v| (v, format_tick(v, step)))
        .collect()
}

/// Compact label for the tick `value` on an axis whose tick spacing is
/// `step`.
///
/// Rules, in order:
/// - values within `step × 1e-9` of zero print as `0`;
/// - when `step < 0.01` or `|value| ≥ 1e9`, scientific notation with a bare
///   exponent: `1e-3`, `2.5e-4`, `1.2e9`;
/// - `|value| ≥ 1e6` uses an `M` suffix and `|value| ≥ 1000` a `k` suffix:
///   `1k`, `1.5k`, `20k`, `2.5M`;
/// - otherwise plain decimals: `0.25`, `500`, `-3`.
///
/// The number of decimals is the fewest that represent `step` exactly (so
/// every label on an axis is distinguishable), then trailing zeros are
/// trimmed. A `step` that is zero or not finite is treated as `|value|`.
///
/// ```
/// use atelier_plot::format_tick;
/// assert_eq!(format_tick(1500.0, 500.0), "1.5k");
/// assert_eq!(format_tick(0.25, 0.25), "0.25");
/// assert_eq!(format_tick(0.001, 0.001), "1e-3");
/// ```
pub fn format_tick(value: f64, step: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let mut step = step.abs();
    if !(step > 0.0 && step.is_finite()) {
        step = value.abs();
    }
    let a = value.abs();
    if a == 0.0 || a <= step * 1e-9 {
        return "0".to_string();
    }
    if step < 1e-2 || a >= 1e9 {
        return scientific(value, step);
    }
    let (div, suffix) = if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let d = decimals_for(step / div);
    let mut s = trim_zeros(format!("{:.*}", d, value / div));
    s.push_str(suffix);
    s
}

fn scientific(value: f64, step: f64) -> String {
    let mut e = value.abs().log10().floor() as i32;
    let d = decimals_for(step / 10f64.powi(e)).min(15);
    let mut m = trim_zeros(format!("{:.*}", d, value / 10f64.powi(e)));
    // Rounding may carry the mantissa to 10 (9.99 -> "10"): renormalise.
    if m.trim_start_matches('-').starts_with("10") && !m.contains('.') {
        e += 1;
        m = trim_zeros(format!("{:.*}", d, value / 10f64.powi(e)));
    }
    format!("{m}e{e}")
}

/// Fewest decimals (up to 12) that represent `x` exactly, within rounding.
fn decimals_for(x: f64) -> usize {
    let x = x.abs();
    if !(x > 0.0 && x.is_finite()) {
        return 0;
    }
    for d in 0..=12 {
        let scaled = x * 10f64.powi(d as i32);
        if (scaled - scaled.round()).abs() <= 1e-6 * scaled.max(1.0) {
            return d;
        }
    }
    12
}

fn trim_zeros(s: String) -> String {
    let out = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if out == "-0" {
        "0".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_exact_values() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(nice_ticks(0.0, 1.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(0.0, 1.0, 11),
            vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        );
        assert_eq!(
            nice_ticks(0.0, 5000.0, 6),
            vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
        );
        assert_eq!(nice_ticks(0.0, 5000.0, 11).len(), 11);
        assert_eq!(nice_ticks(0.0, 5000.0, 11)[3], 1500.0);
        assert_eq!(
            nice_ticks(-3.7, 12.2, 6),
            vec![-2.5, 0.0, 2.5, 5.0, 7.5, 10.0]
        );
        assert_eq!(nice_ticks(0.00013, 0.00042, 5), vec![2e-4, 3e-4, 4e-4]);
        assert_eq!(nice_ticks(-1.0, 1.0, 5), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(nice_ticks(97.0, 103.0, 4), vec![98.0, 100.0, 102.0]);
        // Reversed bounds are swapped.
        assert_eq!(nice_ticks(1.0, 0.0, 5), nice_ticks(0.0, 1.0, 5));
    }

    #[test]
    fn nice_ticks_respect_max_and_range() {
        for &(lo, hi) in &[
            (0.0, 1.0),
            (-7.3, 1e4),
            (1e-7, 3e-7),
            (123.4, 123.5),
            (-1e12, 1e12),
        ] {
            for max in 2..12 {
                let t = nice_ticks(lo, hi, max);
                assert!(
                    !t.is_empty() && t.len() <= max,
                    "{lo}..{hi} max {max}: {t:?}"
                );
                assert!(t
                    .iter()
                    .all(|&v| v >= lo - 1e-9 * (hi - lo) && v <= hi + 1e-9 * (hi - lo)));
                assert!(t.windows(2).all(|w| w[1] > w[0]));
            }
        }
    }

    #[test]
    fn nice_ticks_degenerate() {
        assert_eq!(nice_ticks(3.0, 3.0, 5), vec![3.0]);
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).is_empty());
        assert!(nice_ticks(0.0, 1.0, 0).is_empty());
        // Huge span does not overflow.
        let t = nice_ticks(-f64::MAX, f64::MAX, 5);
        assert!(t.len() <= 5 && !t.is_empty());
        // Range tiny relative to its offset: falls back to the bounds.
        assert_eq!(nice_ticks(1e17, 1e17 + 64.0, 5).len(), 2);
    }

    #[test]
    fn labels() {
        assert_eq!(format_tick(0.0, 500.0), "0");
        assert_eq!(format_tick(500.0, 500.0), "500");
        assert_eq!(format_tick(1000.0, 500.0), "1k");
        assert_eq!(format_tick(1500.0, 500.0), "1.5k");
        assert_eq!(format_tick(20000.0, 5000.0), "20k");
        assert_eq!(format_tick(1250.0, 250.0), "1.25k");
        assert_eq!(format_tick(2_500_000.0, 500_000.0), "2.5M");
        assert_eq!(format_tick(0.25, 0.25), "0.25");
        assert_eq!(format_tick(0.5, 0.25), "0.5");
        assert_eq!(format_tick(0.3, 0.1), "0.3");
        assert_eq!(format_tick(-2.5, 2.5), "-2.5");
        assert_eq!(format_tick(-3.0, 1.0), "-3");
        assert_eq!(format_tick(0.001, 0.001), "1e-3");
        assert_eq!(format_tick(1.5e-4, 5e-5), "1.5e-4");
        assert_eq!(format_tick(2e-4, 5e-5), "2e-4");
        assert_eq!(format_tick(0.01, 0.01), "0.01");
        // One notation per axis: with a step below 0.01 even 0.015 is
        // scientific, so it matches its neighbour 5e-3.
        assert_eq!(format_tick(0.015, 0.005), "1.5e-2");
        assert_eq!(format_tick(0.005, 0.005), "5e-3");
        assert_eq!(format_tick(0.099, 0.001), "9.9e-2");
        assert_eq!(format_tick(9.999e-3, 1e-6), "9.999e-3");
        assert_eq!(format_tick(3e9, 1e9), "3e9");
        assert_eq!(format_tick(5.551115123125783e-17, 0.1), "0");
        assert_eq!(format_tick(0.30000000000000004, 0.1), "0.3");
        assert_eq!(format_tick(f64::NAN, 1.0), "NaN");
        assert_eq!(format_tick(7.0, 0.0), "7");
    }

    #[test]
    fn log_axis_ticks() {
        let t = log_ticks(-3.2, 1.1, 8);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1e-3", "0.01", "0.1", "1", "10"]);
        // Twelve decades with room for five ticks: thinned whole decades.
        let t = log_ticks(0.0, 12.0, 5);
        assert!(t.len() >= 2 && t.len() <= 5, "{t:?}");
        assert!(t.iter().all(|(v, _)| v.log10().fract().abs() < 1e-9));
        // Less than a decade: 1-2-5 sub-decade ticks.
        let t = log_ticks(0.0, 0.9, 8);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5"]);
        // Two decades: sub-decade ticks when they fit, whole decades when not.
        let t = log_ticks(-0.1, 2.1, 8);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10", "20", "50", "100"]);
        let t = log_ticks(-0.1, 2.1, 4);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1", "10", "100"]);
        // Very narrow: linear ticks, all positive.
        let t = log_ticks(0.0, 0.05, 6);
        assert!(t.len() >= 2 && t.iter().all(|(v, _)| *v > 0.0), "{t:?}");
    }
}
