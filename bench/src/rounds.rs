//! Ratios measured over several alternating rounds, so that a verdict rests on their middle
//! rather than on one pass through a noisy, shared machine.

/// The ratio of each round, and what they say together.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounds {
    ratios: Vec<f64>,
}

impl Rounds {
    pub fn new(ratios: Vec<f64>) -> Self {
        Self { ratios }
    }

    /// The round whose ratio is the median (the lower middle one for an even count), so
    /// that its own figures can be shown; `None` without rounds.
    pub fn median_round(&self) -> Option<usize> {
        let mut order: Vec<usize> = (0..self.ratios.len()).collect();
        order.sort_by(|&a, &b| self.ratios[a].total_cmp(&self.ratios[b]));
        order.get(self.ratios.len().saturating_sub(1) / 2).copied()
    }

    /// The median ratio.
    pub fn median(&self) -> Option<f64> {
        self.median_round().map(|i| self.ratios[i])
    }

    /// How many rounds reached `target`.
    pub fn reaching(&self, target: f64) -> usize {
        self.ratios.iter().filter(|&&r| r >= target).count()
    }

    /// Each round's ratio, in the order the rounds ran.
    pub fn each(&self) -> &[f64] {
        &self.ratios
    }

    /// The lowest and highest ratio.
    pub fn range(&self) -> Option<(f64, f64)> {
        let lo = self.ratios.iter().copied().reduce(f64::min)?;
        let hi = self.ratios.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }
}

/// The middle of `values` (the lower middle one for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    Rounds::new(values.to_vec()).median()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_the_middle_ratio_wherever_it_ran() {
        let r = Rounds::new(vec![0.61, 0.43, 0.52, 0.47, 0.58]);
        assert_eq!(r.median_round(), Some(2));
        assert_eq!(r.median(), Some(0.52));
        let r = Rounds::new(vec![0.52, 0.61, 0.43]);
        assert_eq!(r.median_round(), Some(0));
    }

    #[test]
    fn an_even_count_takes_the_lower_middle() {
        let r = Rounds::new(vec![0.55, 0.40, 0.49, 0.60]);
        assert_eq!(r.median(), Some(0.49));
        assert_eq!(median(&[3.0, 1.0]), Some(1.0));
    }

    #[test]
    fn counts_and_range() {
        let r = Rounds::new(vec![0.50, 0.49, 0.70, 0.51]);
        assert_eq!(r.reaching(0.5), 3);
        assert_eq!(r.range(), Some((0.49, 0.70)));
    }

    #[test]
    fn no_rounds_no_median() {
        let r = Rounds::new(Vec::new());
        assert_eq!(r.median_round(), None);
        assert_eq!(r.range(), None);
        assert_eq!(r.reaching(0.5), 0);
    }
}
