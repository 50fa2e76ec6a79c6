//! Counting windows: fixed windows of a rate's unit (aligned on the Unix epoch, as
//! envoyproxy/ratelimit's) and a quota's calendar windows in UTC (the hour, the day, the
//! month). Pure arithmetic on Unix seconds; the clock is the caller's.

use trellis_config::types::ratelimit::{QuotaWindow, RateUnit};

/// How a rule's windows are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `seconds`-long windows starting at multiples of `seconds`.
    Fixed(RateUnit),
    /// Calendar windows in UTC.
    Calendar(QuotaWindow),
}

/// One window: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl WindowKind {
    /// The window holding `now`.
    pub fn at(self, now: u64) -> Window {
        match self {
            WindowKind::Fixed(unit) => fixed(now, unit.seconds()),
            WindowKind::Calendar(QuotaWindow::Hour) => fixed(now, 3600),
            WindowKind::Calendar(QuotaWindow::Day) => fixed(now, 86_400),
            WindowKind::Calendar(QuotaWindow::Month) => {
                let (year, month, _) = civil_from_days(now / 86_400);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Window {
                    start: days_from_civil(year, month, 1) * 86_400,
                    end: days_from_civil(next_year, next_month, 1) * 86_400,
                }
            }
        }
    }

    /// `SECOND`…`DAY` for rates, `HOUR`/`DAY`/`MONTH` for quotas.
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Fixed(RateUnit::Second) => "SECOND",
            WindowKind::Fixed(RateUnit::Minute) => "MINUTE",
            WindowKind::Fixed(RateUnit::Hour) | WindowKind::Calendar(QuotaWindow::Hour) => "HOUR",
            WindowKind::Fixed(RateUnit::Day) | WindowKind::Calendar(QuotaWindow::Day) => "DAY",
            WindowKind::Calendar(QuotaWindow::Month) => "MONTH",
        }
    }
}

impl Window {
    pub fn seconds(&self) -> u64 {
        self.end - self.start
    }
}

fn fixed(now: u64, seconds: u64) -> Window {
    let start = now - now % seconds;
    Window {
        start,
        end: start + seconds,
    }
}

/// `2024-02-29T13:05:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let (y, m, d) = civil_from_days(unix / 86_400);
    let s = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm,
/// restricted to days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date on or after it.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: u64, m: u64, d: u64, h: u64, min: u64, s: u64) -> u64 {
        days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s
    }

    #[test]
    fn fixed_windows_align_on_the_epoch() {
        let minute = WindowKind::Fixed(RateUnit::Minute);
        assert_eq!(
            minute.at(1_700_000_000),
            Window {
                start: 1_699_999_980,
                end: 1_700_000_040
            }
        );
        assert_eq!(minute.at(1_699_999_980).start, 1_699_999_980);
        assert_eq!(
            WindowKind::Fixed(RateUnit::Second).at(5),
            Window { start: 5, end: 6 }
        );
        let day = WindowKind::Fixed(RateUnit::Day).at(at(2024, 3, 1, 23, 59, 59));
        assert_eq!(
            (day.start, day.end),
            (at(2024, 3, 1, 0, 0, 0), at(2024, 3, 2, 0, 0, 0))
        );
    }

    #[test]
    fn calendar_windows_are_utc_hours_days_and_months() {
        let now = at(2024, 2, 29, 13, 5, 7);
        assert_eq!(rfc3339(now), "2024-02-29T13:05:07Z");
        let hour = WindowKind::Calendar(QuotaWindow::Hour).at(now);
        assert_eq!(
            (rfc3339(hour.start), rfc3339(hour.end)),
            ("2024-02-29T13:00:00Z".into(), "2024-02-29T14:00:00Z".into())
        );
        let day = WindowKind::Calendar(QuotaWindow::Day).at(now);
        assert_eq!(rfc3339(day.start), "2024-02-29T00:00:00Z");
        assert_eq!(day.seconds(), 86_400);
        // Leap February: 29 days; December rolls over into the next year.
        let month = WindowKind::Calendar(QuotaWindow::Month).at(now);
        assert_eq!(
            (rfc3339(month.start), rfc3339(month.end)),
            ("2024-02-01T00:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        assert_eq!(month.seconds(), 29 * 86_400);
        let feb = WindowKind::Calendar(QuotaWindow::Month).at(at(2023, 2, 28, 23, 59, 59));
        assert_eq!(feb.seconds(), 28 * 86_400);
        let dec = WindowKind::Calendar(QuotaWindow::Month).at(at(2025, 12, 31, 23, 59, 59));
        assert_eq!(
            (rfc3339(dec.start), rfc3339(dec.end)),
            ("2025-12-01T00:00:00Z".into(), "2026-01-01T00:00:00Z".into())
        );
        // The first second of a month belongs to it, the last of the previous one does not.
        let first = WindowKind::Calendar(QuotaWindow::Month).at(at(2026, 1, 1, 0, 0, 0));
        assert_eq!(rfc3339(first.start), "2026-01-01T00:00:00Z");
        assert_eq!(first.seconds(), 31 * 86_400);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }
}
