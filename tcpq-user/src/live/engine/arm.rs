//! Arming and disarming a family's tier-2 programs: trouble arms at once, a quiet period
//! disarms (`Arm::step`), and the state the renderers show (`FamilyView`).
use std::time::{Duration, Instant};

use serde::Serialize;

/// Watching (tier 0/1 only) or tracing (tier 2 attached) one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub tracing: bool,
    /// Unix time of the last change.
    pub since_unix: u64,
    pub why: String,
    last_trouble: Option<Instant>,
}

impl Default for Arm {
    fn default() -> Self {
        Self {
            tracing: false,
            since_unix: unix_now(),
            why: "no trouble seen".into(),
            last_trouble: None,
        }
    }
}

/// What a family should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Arm,
    Disarm,
    Stay,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Arm {
    /// One reading's verdict: trouble arms at once; `quiet` without trouble disarms.
    pub fn step(&mut self, now: Instant, trouble: Option<&str>, quiet: Duration) -> Step {
        if let Some(why) = trouble {
            self.last_trouble = Some(now);
            if !self.tracing {
                self.tracing = true;
                self.since_unix = unix_now();
                self.why = why.to_string();
                return Step::Arm;
            }
            return Step::Stay;
        }
        if self.tracing
            && self
                .last_trouble
                .is_none_or(|t| now.saturating_duration_since(t) >= quiet)
        {
            self.tracing = false;
            self.since_unix = unix_now();
            self.why = format!("quiet for {:.0} s", quiet.as_secs_f64());
            return Step::Disarm;
        }
        Step::Stay
    }
}

/// A family's state as the renderers show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FamilyView {
    pub family: &'static str,
    /// "watching" (counters only), "tracing" (tier 2 attached) or "always" (`--hooks all`).
    pub state: &'static str,
    pub since: u64,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trouble_arms_at_once_and_quiet_disarms() {
        let quiet = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut a = Arm::default();
        assert_eq!(a.step(t0, None, quiet), Step::Stay);
        assert_eq!(a.step(t0, Some("12 refused"), quiet), Step::Arm);
        assert!(a.tracing);
        assert_eq!(a.why, "12 refused");
        assert_eq!(
            a.step(t0 + Duration::from_secs(1), Some("more"), quiet),
            Step::Stay
        );
        assert_eq!(a.why, "12 refused", "the reason it was armed stays");
        assert_eq!(
            a.step(t0 + Duration::from_secs(30), None, quiet),
            Step::Stay
        );
        assert_eq!(
            a.step(t0 + Duration::from_secs(31), None, quiet),
            Step::Disarm
        );
        assert!(!a.tracing);
        assert_eq!(
            a.step(t0 + Duration::from_secs(40), None, quiet),
            Step::Stay
        );
    }
}
