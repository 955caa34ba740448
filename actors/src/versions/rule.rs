//! Which kept versions go: the one eviction rule, pure.

use std::time::Duration;

/// How many of the oldest versions go, given `(kept_at ms, stored bytes)`
/// of every version oldest first: every version older than `keep`, then
/// more of the oldest while the rest take more than `max_bytes`. Both
/// limits remove from the old end, so what goes is always a prefix.
pub fn evict_count(
    oldest_first: &[(u64, u64)],
    keep: Duration,
    max_bytes: u64,
    now_ms: u64,
) -> usize {
    let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(keep_ms);
    // Expired: kept strictly before the cutoff (a version exactly `keep`
    // old stays for this one more sweep).
    let expired = oldest_first
        .iter()
        .take_while(|(at, _)| *at < cutoff)
        .count();
    let mut total: u64 = oldest_first[expired..].iter().map(|(_, b)| b).sum();
    let mut n = expired;
    while total > max_bytes && n < oldest_first.len() {
        total -= oldest_first[n].1;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn nothing_goes_within_both_limits() {
        let v = [(1_000, 10), (2_000, 10)];
        assert_eq!(evict_count(&v, DAY, 20, 3_000), 0);
        assert_eq!(evict_count(&[], DAY, 0, 3_000), 0);
    }

    #[test]
    fn versions_older_than_keep_go_oldest_first() {
        let v = [(1_000, 1), (2_000, 1), (5_000, 1)];
        // keep 2 s at t = 4.5 s: the cutoff is 2.5 s.
        assert_eq!(evict_count(&v, Duration::from_secs(2), u64::MAX, 4_500), 2);
        // Exactly at the cutoff: stays.
        assert_eq!(evict_count(&v, Duration::from_secs(2), u64::MAX, 4_000), 1);
        // A clock before the versions (set back): nothing expires.
        assert_eq!(evict_count(&v, Duration::from_secs(2), u64::MAX, 0), 0);
    }

    #[test]
    fn past_max_bytes_the_oldest_go_until_the_rest_fits() {
        let v = [(1, 40), (2, 30), (3, 20), (4, 10)];
        assert_eq!(evict_count(&v, DAY, 100, 10), 0);
        assert_eq!(evict_count(&v, DAY, 99, 10), 1);
        assert_eq!(evict_count(&v, DAY, 30, 10), 2);
        // One version bigger than the whole budget goes too.
        assert_eq!(evict_count(&v, DAY, 5, 10), 4);
        assert_eq!(evict_count(&v, DAY, 0, 10), 4);
    }

    #[test]
    fn both_limits_together_remove_a_prefix() {
        let v = [(1_000, 50), (9_000, 50), (9_500, 50)];
        // The first is expired; the other two still exceed 60 bytes.
        assert_eq!(evict_count(&v, Duration::from_secs(5), 60, 10_000), 2);
    }
}
