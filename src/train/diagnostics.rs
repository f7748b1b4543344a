//! Signs that an objective is not learning, from what each step already reports. ITM's are the
//! most asked about: a matcher that answers from the label ratio alone sits at the loss of a
//! constant answer (about 0.64 with one matching pair for two mined negatives) while every other
//! curve moves.

/// The cross-entropy of the best constant answer for `positives` matching pairs among `pairs`:
/// the entropy of that label mix. `None` without pairs.
pub fn constant_answer_loss(positives: usize, pairs: usize) -> Option<f64> {
    if pairs == 0 {
        return None;
    }
    let p = positives as f64 / pairs as f64;
    if p <= 0.0 || p >= 1.0 {
        return Some(0.0);
    }
    Some(-(p * p.ln() + (1.0 - p) * (1.0 - p).ln()))
}

/// Watches ITM against its constant answer and says so, once, when it has stayed within `margin`
/// of it for `steps` steps in a row (`steps` = 0: never).
pub struct ItmStall {
    steps: u64,
    margin: f64,
    run: u64,
    warned: bool,
}

impl ItmStall {
    pub fn new(steps: u64, margin: f64) -> Self {
        Self { steps, margin, run: 0, warned: false }
    }

    /// One step's ITM loss and its constant answer's; the warning, the first time the stall
    /// reaches `steps`.
    pub fn observe(&mut self, itm: Option<f64>, constant: Option<f64>) -> Option<String> {
        if self.steps == 0 || self.warned {
            return None;
        }
        match (itm, constant) {
            (Some(loss), Some(c)) if (loss - c).abs() <= self.margin => self.run += 1,
            _ => {
                self.run = 0;
                return None;
            }
        }
        if self.run < self.steps {
            return None;
        }
        self.warned = true;
        let c = constant.unwrap_or_default();
        Some(format!(
            "warning: for {} steps ITM has stayed within {} of {c:.3}, the loss of answering from the share of matching pairs alone: \
             it does not tell pairs apart yet. It usually starts once ITC retrieval is well above chance; if it does not, train \
             longer or at a higher optim.lr, check that image features reach the cross-attention (encoder weights, data.features), \
             or raise objectives.itm.weight (log.itm_stall_steps = 0 silences this)",
            self.steps, self.margin
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_positive_for_two_negatives_costs_ln3_minus_two_thirds_ln2() {
        let c = constant_answer_loss(32, 96).unwrap();
        assert!((c - (3f64.ln() - 2.0 / 3.0 * 2f64.ln())).abs() < 1e-12, "{c}");
        assert!((c - 0.6365).abs() < 1e-4);
        assert_eq!(constant_answer_loss(4, 4), Some(0.0));
        assert_eq!(constant_answer_loss(0, 0), None);
    }

    #[test]
    fn warns_once_after_a_stall_and_not_while_learning() {
        let c = Some(0.6365);
        let mut watch = ItmStall::new(3, 0.01);
        // Learning: far below the constant answer.
        for _ in 0..10 {
            assert!(watch.observe(Some(0.40), c).is_none());
        }
        // Two stalled steps, a step away from it, then three in a row.
        assert!(watch.observe(Some(0.640), c).is_none());
        assert!(watch.observe(Some(0.630), c).is_none());
        assert!(watch.observe(Some(0.60), c).is_none());
        assert!(watch.observe(Some(0.636), c).is_none());
        assert!(watch.observe(Some(0.637), c).is_none());
        let warning = watch.observe(Some(0.635), c).expect("the third stalled step in a row warns");
        assert!(warning.contains("of 0.636,") && warning.contains("for 3 steps"), "{warning}");
        assert!(watch.observe(Some(0.636), c).is_none(), "once");
        let mut off = ItmStall::new(0, 0.01);
        assert!((0..10).all(|_| off.observe(Some(0.6365), c).is_none()));
        assert!(ItmStall::new(1, 0.01).observe(None, None).is_none(), "ITM switched off");
    }
}
