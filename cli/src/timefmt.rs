//! UTC timestamps: `2026-01-01T00:00:00Z` <-> seconds since the Unix epoch. Just what the test
//! files and the apply history need; no time zones.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or a plain number of seconds) into Unix seconds.
pub fn parse(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a UTC time like 2026-01-01T00:00:00Z or Unix seconds");
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(secs);
    }
    let b = text.trim().as_bytes();
    if b.len() != 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(10) != Some(&b'T')
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || b.get(19) != Some(&b'Z')
    {
        return Err(bad());
    }
    let num =
        |from: usize, to: usize| -> Result<i64, String> { text.trim().get(from..to).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad) };
    let (y, mo, d, h, mi, s) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 || y < 1970 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).map_err(|_| bad())
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_instants() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-01-01T00:00:00Z", 1_767_225_600),
            ("2023-11-14T22:13:20Z", 1_700_000_000),
            ("2100-01-01T00:00:00Z", 4_102_444_800),
            ("2024-02-29T12:34:56Z", 1_709_210_096),
        ] {
            assert_eq!(parse(text), Ok(secs), "{text}");
            assert_eq!(format(secs), text);
        }
        assert_eq!(parse("1700000000"), Ok(1_700_000_000));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in ["2026-01-01", "2026-01-01T00:00:00+01:00", "2026-13-01T00:00:00Z", "soon", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
