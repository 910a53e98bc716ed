//! Human-friendly durations in config files (`250ms`, `15s`, `5m`, `1h30m`, `2d`), at most a
//! year, so that adding one to a clock can never overflow.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with a unit, e.g. `250ms`, `15s`, `1h30m`; never more
/// than [`Duration::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

/// The units a duration may be written in, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl Duration {
    /// The longest duration a config may give: 365 days.
    pub const MAX: Duration = Duration::from_secs(365 * 86_400);

    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    pub const fn get(self) -> StdDuration {
        self.0
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Written in the units it is read in, largest first: `1h 30m`, `1s 500ms`, `0s`.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if rest == 0 {
            return f.write_str("0s");
        }
        let mut first = true;
        for (unit, ms) in UNITS {
            if rest >= ms {
                let n = rest / ms;
                rest %= ms;
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{n}{unit}")?;
                first = false;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    /// Numbers each followed by a unit (`ms`, `s`, `m`, `h`, `d`), optionally separated by
    /// spaces; a bare `0` is zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "write it with a unit: ms, s, m, h or d, e.g. \"250ms\", \"15s\", \"1h30m\"";
        let text = s.trim();
        if text == "0" {
            return Ok(Duration::default());
        }
        if text.is_empty() {
            return Err(format!("invalid duration {s:?}: empty; {hint}"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (number, after) = rest.split_at(digits);
            let letters = after.len()
                - after
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            let (unit, after) = after.split_at(letters);
            if number.is_empty() {
                return Err(format!(
                    "invalid duration {s:?}: {rest:?} does not start with a number; {hint}"
                ));
            }
            let Some(&(_, ms)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(if unit.is_empty() && after.starts_with('.') {
                    format!(
                        "invalid duration {s:?}: fractions are not accepted; write it in a \
                         smaller unit, e.g. \"1500ms\" for 1.5s"
                    )
                } else if unit.is_empty() {
                    format!("invalid duration {s:?}: {number} has no unit; {hint}")
                } else {
                    format!("invalid duration {s:?}: unknown unit {unit:?}; {hint}")
                });
            };
            let part = number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(ms))
                .and_then(|n| total.checked_add(n));
            match part {
                Some(t) if t <= Duration::MAX.millis() => total = t,
                _ => {
                    return Err(format!(
                        "{text} is longer than the maximum, {}",
                        Duration::MAX
                    ))
                }
            }
            rest = after.trim_start();
        }
        Ok(Duration::from_millis(total))
    }
}

impl Duration {
    const fn millis(self) -> u64 {
        self.0.as_secs() * 1_000 + self.0.subsec_millis() as u64
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"250ms\", \"15s\", \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!(
                        "duration {v} has no unit; write e.g. \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v < 0 {
                    return Err(E::custom(format!("duration {v} is negative")));
                }
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
        assert_eq!("15s".parse::<Duration>(), Ok(Duration::from_secs(15)));
        assert_eq!("5m".parse::<Duration>(), Ok(Duration::from_secs(300)));
        assert_eq!("1h30m".parse::<Duration>(), Ok(Duration::from_secs(5400)));
        assert_eq!("1h 30m".parse::<Duration>(), Ok(Duration::from_secs(5400)));
        assert_eq!("2d".parse::<Duration>(), Ok(Duration::from_secs(172_800)));
        assert_eq!("0".parse::<Duration>(), Ok(Duration::default()));
        assert_eq!("0s".parse::<Duration>(), Ok(Duration::default()));
        assert!("15".parse::<Duration>().is_err());
        assert!("soon".parse::<Duration>().is_err());
    }

    #[test]
    fn only_documented_units() {
        for text in ["5M", "1y", "1w", "10us", "3 s", "s", "-1s", "1h30"] {
            let e = text.parse::<Duration>().unwrap_err();
            assert!(e.contains("ms, s, m, h or d"), "{text}: {e}");
        }
        let e = "1.5s".parse::<Duration>().unwrap_err();
        assert!(e.contains("fractions are not accepted"), "{e}");
        assert!(e.contains("\"1500ms\""), "{e}");
        let e = "5M".parse::<Duration>().unwrap_err();
        assert!(e.contains("unknown unit \"M\""), "{e}");
    }

    #[test]
    fn never_longer_than_a_year() {
        assert_eq!("365d".parse::<Duration>(), Ok(Duration::MAX));
        for text in [
            "366d",
            "9223372036854775807s",
            "18446744073709551616ms",
            "365d1ms",
        ] {
            let e = text.parse::<Duration>().unwrap_err();
            assert!(e.contains("longer than the maximum, 365d"), "{text}: {e}");
        }
        // So a deadline a duration ahead of now is always representable.
        let later = std::time::Instant::now().checked_add(Duration::MAX.get());
        assert!(later.is_some());
    }

    #[test]
    fn round_trips_through_display() {
        for ms in [
            0,
            1,
            250,
            1500,
            60_000,
            5_400_000,
            90_061_001,
            365 * 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{d}");
        }
        assert_eq!(Duration::from_millis(1500).to_string(), "1s 500ms");
        assert_eq!(Duration::from_secs(5400).to_string(), "1h 30m");
    }
}
