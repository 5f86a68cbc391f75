//! Medians and ratios of interleaved A/B(/C…) runs.

/// The median of `v` (mean of the middle two for an even count); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
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

/// Results of interleaved runs of several arms (A/B/C…): `runs[arm][round]`.
#[derive(Debug, Clone, Default)]
pub struct Arms {
    /// What was measured.
    pub name: String,
    /// One label per arm.
    pub labels: Vec<&'static str>,
    /// Per arm, one figure per round.
    pub runs: Vec<Vec<f64>>,
}

impl Arms {
    /// Arms named `labels`, without runs yet.
    pub fn new(name: String, labels: &[&'static str]) -> Arms {
        Arms {
            name,
            labels: labels.to_vec(),
            runs: vec![Vec::new(); labels.len()],
        }
    }

    /// Median of arm `a` over median of arm `b`.
    pub fn ratio(&self, a: usize, b: usize) -> f64 {
        let m = median(&self.runs[b]);
        if m == 0.0 {
            0.0
        } else {
            median(&self.runs[a]) / m
        }
    }

    /// Median over rounds of arm `a`'s figure over arm `b`'s of the same round.
    pub fn round_ratio(&self, a: usize, b: usize) -> f64 {
        let r: Vec<f64> = self.runs[a]
            .iter()
            .zip(&self.runs[b])
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        median(&r)
    }

    /// A human-readable report: every run and median per arm, then each given comparison
    /// `(a, b)` as ratio of medians and median of per-round ratios.
    pub fn report(&self, comparisons: &[(usize, usize)]) -> String {
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
            out += &format!(
                "  {} / {}: ratio of medians {:.4}, median of round ratios {:.4}\n",
                self.labels[a],
                self.labels[b],
                self.ratio(a, b),
                self.round_ratio(a, b)
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
        assert!(
            a.report(&[(2, 0)])
                .contains("with / base: ratio of medians 0.5000")
        );
    }
}
