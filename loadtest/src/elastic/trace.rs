//! Arrival times of the traffic `elastic` offers: built-in shapes over the run, or a CSV.

use crate::load::Rng;
use anyhow::Context;
use clap::ValueEnum;
use std::f64::consts::TAU;
use std::path::Path;

/// Built-in traffic shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// Idle (10 %), a burst at the peak rate (20 %), steady at 30 % of it (40 %), idle (30 %).
    Burst,
    /// One day compressed into the run: a sine from nothing up to the peak and back.
    Daily,
    /// Three short spikes at the peak rate (5 % of the run each), nothing between them.
    Spikes,
}

impl Shape {
    /// Offered rate at `t` of a run `duration` long with peak `peak`, requests per second.
    pub fn rate(self, t: f64, duration: f64, peak: f64) -> f64 {
        let x = t / duration;
        match self {
            Shape::Burst => match x {
                x if x < 0.1 => 0.0,
                x if x < 0.3 => peak,
                x if x < 0.7 => 0.3 * peak,
                _ => 0.0,
            },
            Shape::Daily => peak * (0.5 - 0.5 * (TAU * x).cos()),
            Shape::Spikes => {
                let spike = [0.1, 0.4, 0.7].iter().any(|&s| (s..s + 0.05).contains(&x));
                if spike { peak } else { 0.0 }
            }
        }
    }

    /// Poisson arrivals (seconds from the start) at the shape's rate over `duration`: a
    /// process at the peak rate, each arrival kept with probability `rate(t) / peak`.
    pub fn arrivals(self, duration: f64, peak: f64, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let (mut t, mut at) = (0.0, Vec::new());
        loop {
            t += -(1.0 - rng.unit()).ln() / peak;
            if t >= duration {
                return at;
            }
            if rng.unit() * peak < self.rate(t, duration, peak) {
                at.push(t);
            }
        }
    }
}

/// Arrival times from a CSV file: the first column of each line, in seconds from the start (a
/// header line that is not a number is skipped); sorted.
pub fn from_csv(path: &Path) -> anyhow::Result<Vec<f64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut at = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let field = line.split(',').next().unwrap_or_default().trim();
        if field.is_empty() {
            continue;
        }
        match field.parse::<f64>() {
            Ok(t) if t.is_finite() && t >= 0.0 => at.push(t),
            Ok(t) => anyhow::bail!("{}:{}: arrival time {t} is not ≥ 0", path.display(), n + 1),
            Err(_) if n == 0 => {} // a header
            Err(_) => anyhow::bail!(
                "{}:{}: {field:?} is not a time in seconds",
                path.display(),
                n + 1
            ),
        }
    }
    anyhow::ensure!(!at.is_empty(), "{} holds no arrival times", path.display());
    at.sort_by(f64::total_cmp);
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_shape_idles_bursts_steadies_and_idles() {
        let at = Shape::Burst.arrivals(100.0, 200.0, 7);
        let count =
            |from: f64, to: f64| at.iter().filter(|&&t| (from..to).contains(&t)).count() as f64;
        assert_eq!(count(0.0, 10.0), 0.0);
        // 20 s at 200/s and 40 s at 60/s: Poisson counts within a few standard deviations.
        assert!(
            (count(10.0, 30.0) - 4000.0).abs() < 300.0,
            "{}",
            count(10.0, 30.0)
        );
        assert!(
            (count(30.0, 70.0) - 2400.0).abs() < 250.0,
            "{}",
            count(30.0, 70.0)
        );
        assert_eq!(count(70.0, 100.0), 0.0);
        assert!(at.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(at, Shape::Burst.arrivals(100.0, 200.0, 7), "seeded");
    }

    #[test]
    fn other_shapes_and_csv_traces() {
        assert_eq!(Shape::Daily.rate(0.0, 10.0, 100.0), 0.0);
        assert!((Shape::Daily.rate(5.0, 10.0, 100.0) - 100.0).abs() < 1e-9);
        assert_eq!(Shape::Spikes.rate(4.2, 10.0, 100.0), 100.0);
        assert_eq!(Shape::Spikes.rate(5.0, 10.0, 100.0), 0.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.csv");
        std::fs::write(&path, "t_s,lane\n2.5,batch\n0.5,realtime\n\n").unwrap();
        assert_eq!(from_csv(&path).unwrap(), [0.5, 2.5]);
        std::fs::write(&path, "t_s\n1\nsoon\n").unwrap();
        let error = from_csv(&path).unwrap_err().to_string();
        assert!(error.contains(":3: \"soon\""), "{error}");
    }
}
