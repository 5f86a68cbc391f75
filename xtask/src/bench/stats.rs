//! Medians and ratios of interleaved A/B(/C…) runs.

/// The median of `v` (mean of the middle two for an even count); 0 for an empty slice.
pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The median, smallest and largest of `v` (zeros for an empty slice): how every summary
/// table states a figure.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), min, max)
}

/// The `q`-quantile of `v` (0 ≤ q ≤ 1, linear interpolation between the closest ranks);
/// 0 for an empty slice.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match s.get(i + 1) {
        Some(next) => s[i] + (next - s[i]) * frac,
        None => s[i],
    }
}

/// Results of interleaved runs of several arms (A/B/C…): `runs[arm][round]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arms {
    /// What was measured.
    pub name: String,
    /// One label per arm.
    pub labels: Vec<&'static str>,
    /// Per arm, one figure per round.
    pub runs: Vec<Vec<f64>>,
}

impl Arms {
    /// Arms named `labels`, without runs yet.
    pub(crate) fn new(name: String, labels: &[&'static str]) -> Arms {
        Arms {
            name,
            labels: labels.to_vec(),
            runs: vec![Vec::new(); labels.len()],
        }
    }

    /// Median of arm `a` over median of arm `b`.
    pub(crate) fn ratio(&self, a: usize, b: usize) -> f64 {
        let m = median(&self.runs[b]);
        if m == 0.0 {
            0.0
        } else {
            median(&self.runs[a]) / m
        }
    }

    /// Arm `a`'s figure over arm `b`'s of the same round, per round.
    pub(crate) fn round_ratios(&self, a: usize, b: usize) -> Vec<f64> {
        self.runs[a]
            .iter()
            .zip(&self.runs[b])
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect()
    }

    /// Median over rounds of arm `a`'s figure over arm `b`'s of the same round.
    pub(crate) fn round_ratio(&self, a: usize, b: usize) -> f64 {
        median(&self.round_ratios(a, b))
    }

    /// A human-readable report: every run and median per arm, then each given comparison
    /// `(a, b)` as ratio of medians and median of per-round ratios.
    pub(crate) fn report(&self, comparisons: &[(usize, usize)]) -> String {
        let width = self.labels.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut out = format!(
            "{}
",
            self.name
        );
        for (label, runs) in self.labels.iter().zip(&self.runs) {
            let all = runs
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ");
            out += &format!("  {label:<width$}  {all}  (median {:.2})\n", median(runs));
        }
        for &(a, b) in comparisons {
            let r = self.round_ratios(a, b);
            out += &format!(
                "  {} / {}: ratio of medians {:.4}, median of round ratios {:.4} \
                 (interquartile {:.4}–{:.4}, min–max {:.4}–{:.4}, {} rounds)\n",
                self.labels[a],
                self.labels[b],
                self.ratio(a, b),
                median(&r),
                quantile(&r, 0.25),
                quantile(&r, 0.75),
                quantile(&r, 0.0),
                quantile(&r, 1.0),
                r.len()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn arm_ratios() {
        let mut a = Arms::new("x".into(), &["base", "noop", "with"]);
        a.runs = vec![
            vec![10.0, 20.0, 30.0],
            vec![9.0, 18.0, 30.0],
            vec![5.0, 10.0, 15.0],
        ];
        assert_eq!(a.ratio(2, 0), 0.5);
        assert_eq!(a.round_ratio(2, 0), 0.5);
        assert_eq!(a.round_ratio(1, 0), 0.9);
        let report = a.report(&[(2, 0), (1, 0)]);
        assert!(report.contains("with / base: ratio of medians 0.5000"));
        assert!(
            report.contains("min–max 0.5000–0.5000, 3 rounds"),
            "{report}"
        );
        assert!(report.contains("interquartile 0.9000–0.9500"), "{report}");
    }
}
