//! Sharing a namespace's exact refusal count among its listeners (tier 0): by their
//! `sk_drops` movements, or for listeners closed since, by their last rates.
use super::ListenerId;

/// Shares a namespace's `drops` (ListenDrops, exact) among its listeners in proportion to how
/// much each one's `sk_drops` moved (largest remainder: the shares add up to `drops`). A
/// listener's sk_drops counts every tcp_listendrop() and also packets discarded on its request
/// sockets (tcp_v4_rcv()'s discard_and_relse, e.g. a final ACK dropped on overflow is counted
/// twice, a retransmitted SYN for a pending request once): it says which listener refused, the
/// counter says how many. Exact per listener whenever one listener of a namespace refuses in a
/// reading (250 ms). Empty when no listener's sk_drops moved.
pub fn share_drops(drops: u64, moved: &[(ListenerId, u64)]) -> Vec<(ListenerId, u64)> {
    let weight: u64 = moved.iter().map(|(_, d)| d).sum();
    if weight == 0 {
        return Vec::new();
    }
    let mut out: Vec<(ListenerId, u64, u64)> = moved
        .iter()
        .filter(|(_, d)| *d > 0)
        .map(|(id, d)| {
            let exact = drops as u128 * *d as u128;
            (
                *id,
                (exact / weight as u128) as u64,
                (exact % weight as u128) as u64,
            )
        })
        .collect();
    let mut left = drops - out.iter().map(|(_, n, _)| n).sum::<u64>();
    out.sort_by_key(|(_, _, rem)| std::cmp::Reverse(*rem));
    for (_, n, _) in out.iter_mut() {
        if left == 0 {
            break;
        }
        *n += 1;
        left -= 1;
    }
    out.into_iter().map(|(id, n, _)| (id, n)).collect()
}

/// The listeners that closed since the last reading, weighted for the namespace's refusals
/// no present listener's sk_drops accounts for (they were counted after the closed ones' last
/// reading): by their sk_drops movement at that reading (how fast each was refusing when last
/// seen), else by what each refused since tcpq watched it, else alike. `gone`: (listener, last
/// movement, refused in all). The second value is whether the split is a guess: more than one
/// of them carries weight (one closed listener, or one that was refusing among others that were
/// not, takes them all: the rule `share_drops` follows within a reading).
pub fn gone_weights(gone: &[(ListenerId, u64, u64)]) -> (Vec<(ListenerId, u64)>, bool) {
    let by = |f: fn(&(ListenerId, u64, u64)) -> u64| -> Vec<(ListenerId, u64)> {
        gone.iter()
            .map(|g| (g.0, f(g)))
            .filter(|(_, w)| *w > 0)
            .collect()
    };
    let mut w = by(|g| g.1);
    if w.is_empty() {
        w = by(|g| g.2);
    }
    if w.is_empty() {
        w = gone.iter().map(|g| (g.0, 1)).collect();
    }
    let guess = w.len() > 1;
    (w, guess)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn the_namespace_total_is_shared_by_sk_drops_and_adds_up() {
        let id = |p| ListenerId {
            netns: 1,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: p,
            cookie: 0,
        };
        let s = share_drops(10, &[(id(80), 3), (id(9000), 8), (id(22), 0)]);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(s.iter().find(|(i, _)| i.lport == 9000).unwrap().1, 7);
        assert_eq!(s.iter().find(|(i, _)| i.lport == 80).unwrap().1, 3);
        assert!(share_drops(5, &[(id(80), 0)]).is_empty());
        assert_eq!(share_drops(0, &[(id(80), 4)]), vec![(id(80), 0)]);
    }
}
