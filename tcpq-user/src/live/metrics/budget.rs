//! Bounded label cardinality: a label family admits its first values, the rest fold into
//! `other`.
use std::collections::HashSet;

use super::OTHER;

/// Admits at most `cap` distinct label values; the rest map to `other`.
#[derive(Debug, Clone)]
pub struct LabelBudget {
    cap: usize,
    admitted: HashSet<String>,
    /// Values folded into `other` (distinct values seen past the bound).
    pub folded: HashSet<String>,
}

impl LabelBudget {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: HashSet::new(),
            folded: HashSet::new(),
        }
    }

    pub fn label(&mut self, value: String) -> String {
        if self.admitted.contains(&value) {
            return value;
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(value.clone());
            return value;
        }
        if self.folded.len() < 100_000 {
            self.folded.insert(value);
        }
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_budget_folds_past_the_bound() {
        let mut b = LabelBudget::new(2);
        assert_eq!(b.label("a".into()), "a");
        assert_eq!(b.label("b".into()), "b");
        assert_eq!(b.label("c".into()), OTHER);
        assert_eq!(b.label("a".into()), "a");
        assert_eq!(b.folded.len(), 1);
    }
}
