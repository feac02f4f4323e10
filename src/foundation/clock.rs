//! Wall-clock time for records (manifests, alias history, the weights cache).

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Now as RFC 3339 UTC with seconds, e.g. `2026-11-27T22:18:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339(unix_now())
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T22:18:00.125Z` (lease records, where
/// order within a second matters); sorts as text.
pub fn now_rfc3339_millis() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let s = rfc3339((ms / 1000) as i64);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms % 1000)
}

/// `secs` since the Unix epoch as RFC 3339 UTC with seconds.
pub fn rfc3339_at(secs: i64) -> String {
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        let m = super::now_rfc3339_millis();
        assert_eq!(m.len(), 24, "{m}");
        assert_eq!(m.as_bytes()[19], b'.');
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
