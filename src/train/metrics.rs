//! Held-out figures of binary classifiers: ROC-AUC, F1 and the threshold that maximises it.

/// Area under the ROC curve of `scores` for `labels` (the probability that a random positive
/// scores above a random negative; ties count half). `None` without both classes.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann–Whitney U from mid-ranks of tied groups.
    let mut rank_sum_positive = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        let mid_rank = (start + end) as f64 / 2.0 + 1.0;
        let positives = order[start..=end].iter().filter(|&&i| labels[i]).count();
        rank_sum_positive += mid_rank * positives as f64;
        start = end + 1;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    Some((rank_sum_positive - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Counts of a thresholded classifier against the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Predicted and true.
    pub true_positives: usize,
    /// Predicted, not true.
    pub false_positives: usize,
    /// Not predicted, true.
    pub false_negatives: usize,
}

impl Confusion {
    /// Counts for `scores >= threshold` against `labels`.
    pub fn at(scores: &[f32], labels: &[bool], threshold: f32) -> Self {
        let mut c = Self::default();
        for (&score, &label) in scores.iter().zip(labels) {
            match (score >= threshold, label) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, true) => c.false_negatives += 1,
                (false, false) => {}
            }
        }
        c
    }

    /// Share of predicted positives that are true (0 when none is predicted).
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// Share of true positives that are predicted.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The threshold among `scores` that gives the highest F1 on `labels` (0.5 when no threshold
/// finds a positive). Choose it on training data, never on the held-out split.
pub fn best_f1_threshold(scores: &[f32], labels: &[bool]) -> f32 {
    let mut candidates: Vec<f32> = scores.to_vec();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut best = (0.0, 0.5);
    // Quantiles are enough: exact F1 at up to 512 candidate thresholds.
    let step = (candidates.len() / 512).max(1);
    for &threshold in candidates.iter().step_by(step) {
        let f1 = Confusion::at(scores, labels, threshold).f1();
        if f1 > best.0 {
            best = (f1, threshold);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_a_perfect_ranking_and_a_half_for_ties() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn auc_matches_pairwise_counting() {
        // 3 positives × 3 negatives: of 9 pairs, the positive wins 5, ties 1 (counts half), loses 3.
        let scores = [0.9, 0.4, 0.6, 0.3, 0.6, 0.7];
        let labels = [true, true, true, false, false, false];
        assert_eq!(roc_auc(&scores, &labels), Some(5.5 / 9.0));
    }

    #[test]
    fn f1_and_its_best_threshold() {
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [false, false, true, true];
        let c = Confusion::at(&scores, &labels, 0.3);
        assert_eq!(
            (c.true_positives, c.false_positives, c.false_negatives),
            (2, 1, 0)
        );
        assert!((c.f1() - 0.8).abs() < 1e-9);
        assert_eq!(c.precision(), 2.0 / 3.0);
        assert_eq!(c.recall(), 1.0);
        // Thresholds 0.1, 0.35, 0.4, 0.8 give F1 0.67, 0.8, 0.5, 0.67.
        assert_eq!(best_f1_threshold(&scores, &labels), 0.35);
    }
}
