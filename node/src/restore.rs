//! `fleetsync restore` and `POST /folders/{id}/restore`: the arguments
//! (which content: a version id, a time, or each file's newest kept
//! version) and the text the CLI prints. The restore itself is
//! `fleetsync_actors::restore`.

use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use fleetsync_actors::restore::When;

/// What `--version` / `--at` (or the API's `version=` / `at=`) ask for;
/// neither: each file's newest kept version.
pub fn when_of(version: Option<&str>, at: Option<&str>, now: SystemTime) -> Result<When, String> {
    match (version, at) {
        (Some(_), Some(_)) => Err("give a version or a time, not both".into()),
        (Some(v), None) => Ok(When::Version(v.trim().to_string())),
        (None, Some(t)) => parse_at(t, now).map(When::At),
        (None, None) => Ok(When::Newest),
    }
}

/// A time as unix milliseconds: RFC 3339 (`2026-11-30T09:00:00Z`, an
/// offset such as `+02:00`, a space for the `T`) or a time ago (`10m`,
/// `2h`, `3d`: that long before `now`).
pub fn parse_at(s: &str, now: SystemTime) -> Result<u64, String> {
    let s = s.trim();
    let t = match fleetsync_config::parse_duration(s) {
        Ok(ago) => now
            .checked_sub(ago)
            .ok_or_else(|| format!("{s:?} ago is before the clock starts"))?,
        Err(_) => rfc3339(s).map_err(|e| {
            format!(
                "time {s:?}: {e}; expected RFC 3339 (2026-11-30T09:00:00Z, or with an offset like +02:00) or a time ago (10m, 2h, 3d)"
            )
        })?,
    };
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("time {s:?} is before 1970"))
}

/// RFC 3339 with any offset (humantime reads UTC only: the offset is
/// applied here).
fn rfc3339(s: &str) -> Result<SystemTime, String> {
    let (local, offset_secs) = split_offset(s);
    let t = humantime::parse_rfc3339_weak(local).map_err(|e| e.to_string())?;
    // local = UTC + offset, so UTC = local - offset.
    let shift = std::time::Duration::from_secs(offset_secs.unsigned_abs());
    let utc = if offset_secs >= 0 {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    };
    utc.ok_or_else(|| "out of range".to_string())
}

/// `(the time without its numeric offset, the offset in seconds)`;
/// `Z` and no offset are left to humantime (UTC).
fn split_offset(s: &str) -> (&str, i64) {
    let Some(cut) = s.len().checked_sub(6) else {
        return (s, 0);
    };
    let (Some(head), Some(tail)) = (s.get(..cut), s.get(cut..)) else {
        return (s, 0);
    };
    let b = tail.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return (s, 0),
    };
    let has_time = head.contains(['T', 't', ' ']);
    match (
        has_time && b[3] == b':',
        tail[1..3].parse::<i64>(),
        tail[4..6].parse::<i64>(),
    ) {
        (true, Ok(h), Ok(m)) if h < 24 && m < 60 => (head, sign * (h * 3600 + m * 60)),
        _ => (s, 0),
    }
}

/// The text `fleetsync restore` prints for the API's JSON report.
pub fn render(v: &serde_json::Value, at: Option<&str>) -> String {
    let mut o = String::new();
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let (restored, unchanged, failed) = (list("restored"), list("unchanged"), list("failed"));
    let path = match s(&v["path"]) {
        p if p.is_empty() => "the whole folder".to_string(),
        p => p,
    };
    let as_of = at.map(|t| format!(" as of {t}")).unwrap_or_default();
    let _ = writeln!(
        o,
        "restored {} file{} of {}{as_of} in folder {}",
        restored.len(),
        if restored.len() == 1 { "" } else { "s" },
        path,
        s(&v["folder"])
    );
    for r in &restored {
        let _ = write!(o, "  {}  (version {}", s(&r["path"]), s(&r["version"]));
        if let Some(k) = r["kept_current"].as_str() {
            let _ = write!(o, "; what was there is kept as version {k}");
        }
        let _ = writeln!(o, ")");
    }
    if !unchanged.is_empty() {
        let _ = writeln!(o, "left alone, already that content: {}", unchanged.len());
        for u in &unchanged {
            let _ = writeln!(o, "  {}", s(u));
        }
    }
    if restored.is_empty() && unchanged.is_empty() && failed.is_empty() {
        let _ = writeln!(
            o,
            "nothing to restore: no file under {path} changed since then (or existed then)"
        );
    }
    if !failed.is_empty() {
        let _ = writeln!(o, "NOT restored: {}", failed.len());
        for f in &failed {
            let _ = writeln!(o, "  {}: {}", s(&f["path"]), s(&f["error"]));
        }
    }
    if !restored.is_empty() {
        let _ = writeln!(
            o,
            "each is a new local change: it reaches the other nodes like any edit"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW_MS: u64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    #[test]
    fn a_time_ago_counts_back_from_now() {
        assert_eq!(parse_at("10m", now()), Ok(NOW_MS - 600_000));
        assert_eq!(parse_at(" 2h ", now()), Ok(NOW_MS - 7_200_000));
        assert_eq!(parse_at("0s", now()), Ok(NOW_MS));
    }

    #[test]
    fn rfc3339_in_utc_or_with_an_offset() {
        assert_eq!(parse_at("2025-11-30T00:00:00Z", now()), Ok(NOW_MS));
        assert_eq!(
            parse_at("2025-11-30T00:00:00.250Z", now()),
            Ok(NOW_MS + 250)
        );
        assert_eq!(parse_at("2025-11-30 00:00:00", now()), Ok(NOW_MS));
        assert_eq!(parse_at("2025-11-30T02:00:00+02:00", now()), Ok(NOW_MS));
        assert_eq!(parse_at("2025-11-29T19:30:00-04:30", now()), Ok(NOW_MS));
        assert_eq!(parse_at("2025-11-30T00:00:00+00:00", now()), Ok(NOW_MS));
    }

    #[test]
    fn nonsense_is_an_error_that_shows_the_forms() {
        let e = parse_at("yesterday", now()).unwrap_err();
        assert!(e.contains("RFC 3339") && e.contains("10m"), "{e}");
        assert!(parse_at("2025-13-01T00:00:00Z", now()).is_err());
        assert!(parse_at("ünïcödé+01:00", now()).is_err());
    }

    #[test]
    fn a_version_and_a_time_exclude_each_other() {
        assert!(when_of(Some("1-ab"), Some("1h"), now()).is_err());
        assert_eq!(when_of(None, None, now()), Ok(When::Newest));
        assert_eq!(
            when_of(Some("1-ab"), None, now()),
            Ok(When::Version("1-ab".into()))
        );
        assert_eq!(
            when_of(None, Some("1s"), now()),
            Ok(When::At(NOW_MS - 1000))
        );
    }
}
