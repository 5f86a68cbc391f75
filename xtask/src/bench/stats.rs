//! Medians and ratios of interleaved A/B runs.

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

/// Results of one A/B comparison: `base` without the change, `with` with it.
#[derive(Debug, Clone, Default)]
pub struct AbResult {
    /// What was measured (e.g. `throughput Gbit/s`).
    pub name: String,
    /// Runs without.
    pub base: Vec<f64>,
    /// Runs with.
    pub with: Vec<f64>,
}

impl AbResult {
    /// Median of `with` over median of `base`.
    pub fn ratio(&self) -> f64 {
        let b = median(&self.base);
        if b == 0.0 {
            0.0
        } else {
            median(&self.with) / b
        }
    }

    /// Median of the per-pair ratios (robust to slow drift of the machine).
    pub fn pair_ratio(&self) -> f64 {
        let r: Vec<f64> = self
            .base
            .iter()
            .zip(&self.with)
            .filter(|(b, _)| **b > 0.0)
            .map(|(b, w)| w / b)
            .collect();
        median(&r)
    }

    /// A human-readable report.
    pub fn report(&self) -> String {
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "{}\n  without agent: {}  (median {:.2})\n  with agent:    {}  (median {:.2})\n  ratio of medians {:.4}, median of pair ratios {:.4}\n",
            self.name,
            fmt(&self.base),
            median(&self.base),
            fmt(&self.with),
            median(&self.with),
            self.ratio(),
            self.pair_ratio()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let r = AbResult {
            name: "x".into(),
            base: vec![10.0, 10.0, 12.0],
            with: vec![9.0, 10.0, 12.0],
        };
        assert_eq!(r.ratio(), 1.0);
        assert_eq!(r.pair_ratio(), 1.0);
    }
}
