//! What every family's diagnosis produces: a [`Finding`] per cause, the cause ids (DESIGN.md;
//! JSON `cause`, a public interface) and the ranking, worst first. Pure.
pub mod owner;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Cause id (DESIGN.md): one of [`cause`].
    pub cause: &'static str,
    /// Refused connections (or cookies) attributable to it: used to rank, worst first.
    pub impact: u64,
    pub text: String,
    pub fix: Vec<String>,
}

/// The cause ids, one per diagnosis rule family-wide.
pub mod cause {
    pub const APP_NOT_ACCEPTING: &str = "app_not_accepting";
    pub const ACCEPT_QUEUE_FULL: &str = "accept_queue_full";
    pub const SYN_QUEUE_FULL: &str = "syn_queue_full";
    pub const SYN_COOKIES: &str = "syn_cookies";
    pub const OVERFLOW_RESETS: &str = "overflow_resets";
    pub const ACCEPT_ERRORS: &str = "accept_errors";
    pub const CONNECT_FAILURES: &str = "connect_failures";
    pub const PORTS_EXHAUSTED: &str = "ports_exhausted";
    pub const TIME_WAIT_PILEUP: &str = "time_wait_pileup";
    pub const CONNTRACK_FULL: &str = "conntrack_full";
    pub const STALE_ESTABLISHED: &str = "stale_established";
    pub const CLOSE_WAIT_LEAK: &str = "close_wait_leak";
    pub const CONNECTION_LIMIT: &str = "connection_limit";
}

/// Ranks by impact, worst first; equal impacts keep their order (the rules' own order).
pub fn rank<T>(items: &mut [T], impact: impl Fn(&T) -> u64) {
    items.sort_by_key(|item| std::cmp::Reverse(impact(item)));
}

/// Assertions every family's diagnosis tests make about a finding's wording.
#[cfg(test)]
pub mod check {
    use super::Finding;

    /// The finding's text contains `needle`; shows the whole text when not.
    #[track_caller]
    pub fn assert_text(f: &Finding, needle: &str) {
        assert!(f.text.contains(needle), "text lacks {needle:?}: {}", f.text);
    }

    /// Fix line `i` contains `needle`; shows every fix when not.
    #[track_caller]
    pub fn assert_fix(f: &Finding, i: usize, needle: &str) {
        assert!(
            f.fix.get(i).is_some_and(|x| x.contains(needle)),
            "fix[{i}] lacks {needle:?}: {:?}",
            f.fix
        );
    }

    #[test]
    #[should_panic(expected = "text lacks \"refused\": 3 accepted")]
    fn a_missing_word_shows_the_text() {
        let f = Finding {
            cause: "x",
            impact: 0,
            text: "3 accepted".into(),
            fix: vec!["raise it".into()],
        };
        assert_text(&f, "accepted");
        assert_fix(&f, 0, "raise");
        assert_text(&f, "refused");
    }
}
