//! Clock readings between members, so an operator can see a node whose
//! clock is off (`fleetsync doctor`, `/status`, `/metrics`).
//!
//! ```text
//!  session up, then every CLOCK_EVERY ──► Control::Clock { unix_ms } ──► peer
//!  peer: offset = unix_ms + rtt/2 − its own now   (positive: we are ahead)
//! ```
//!
//! One message, no reply: the session's QUIC round-trip estimate stands in
//! for the request/response of NTP, so the reading is off by at most the
//! path's asymmetry (under rtt/2) plus the time the message queued behind
//! others on the control stream. That is milliseconds on a LAN, far below
//! what matters here: concurrent edits are decided by mtime, so clocks that
//! differ by seconds pick the "later" edit wrongly.
//!
//! A reading is display only: nothing in sync depends on it, so a member
//! that lies about its clock misleads the operator's view of itself and
//! nothing else (the arithmetic saturates on absurd values).

use std::time::{Duration, SystemTime};

/// How often each side sends its clock (the first goes as the session
/// starts). A drifting clock shows up within this.
pub const CLOCK_EVERY: Duration = Duration::from_secs(60);

/// The first protocol version that sends and understands `Control::Clock`:
/// version 2 peers refuse any control message they do not know.
pub const CLOCK_SINCE_VERSION: u32 = 3;

/// A peer's clock as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// The peer's clock minus ours, in ms: positive when it is ahead.
    pub offset_ms: i64,
    /// How far off the reading may be (half the session's rtt then).
    pub uncertainty_ms: u64,
    /// When it was measured, by our clock.
    pub at: SystemTime,
}

/// Milliseconds since the Unix epoch by this host's clock (negative
/// before 1970, which a badly set clock can be).
pub fn now_unix_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The peer's offset from a reading it sent at `sent_unix_ms` (its
/// clock) that arrived at `received` (ours), over a path with `rtt`: the
/// message took about rtt/2 to arrive, so the peer's clock read
/// `sent_unix_ms + rtt/2` when ours read `received`.
pub fn offset(sent_unix_ms: i64, received: SystemTime, rtt: Duration) -> ClockOffset {
    let half_rtt = i64::try_from(rtt.as_millis() / 2).unwrap_or(i64::MAX);
    ClockOffset {
        offset_ms: sent_unix_ms
            .saturating_add(half_rtt)
            .saturating_sub(unix_ms(received)),
        uncertainty_ms: half_rtt.unsigned_abs(),
        at: received,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1_800_000_000);

    fn at(d: Duration) -> SystemTime {
        SystemTime::UNIX_EPOCH + d
    }

    #[test]
    fn a_peer_a_day_ahead_reads_plus_a_day_and_one_behind_reads_minus() {
        let now = at(T);
        let day_ms = 86_400_000;
        let ahead = offset(unix_ms(now) + day_ms, now, Duration::ZERO);
        assert_eq!(ahead.offset_ms, day_ms);
        let behind = offset(unix_ms(now) - day_ms, now, Duration::ZERO);
        assert_eq!(behind.offset_ms, -day_ms);
    }

    #[test]
    fn half_the_rtt_is_added_for_the_trip_and_is_the_uncertainty() {
        // Same clocks: the reading was sent 20 ms before it arrived.
        let now = at(T);
        let sent = unix_ms(now) - 20;
        let o = offset(sent, now, Duration::from_millis(40));
        assert_eq!(o.offset_ms, 0);
        assert_eq!(o.uncertainty_ms, 20);
        assert_eq!(o.at, now);
    }

    #[test]
    fn absurd_readings_saturate_instead_of_overflowing() {
        let now = at(T);
        assert_eq!(
            offset(i64::MAX, now, Duration::from_secs(1)).offset_ms,
            i64::MAX - unix_ms(now)
        );
        assert_eq!(
            offset(i64::MIN, now, Duration::ZERO).offset_ms,
            i64::MIN,
            "saturates at the bottom"
        );
    }

    #[test]
    fn a_clock_before_1970_is_negative_ms() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(unix_ms(before), -1500);
    }
}
