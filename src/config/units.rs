//! Human-readable durations (`"250ms"`, `"1h"`) and sizes (`"64MiB"`) in config, both ways.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as `"250ms"`, `"30s"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Human(pub Duration);

impl Human {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Human {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The longest duration a setting may be: added to the clock as a deadline, a longer one
/// could overflow it.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            de::Error::custom(format!(
                "{s:?} is not a duration like \"250ms\" or \"30s\": {e}"
            ))
        })?;
        if d > MAX_DURATION {
            return Err(de::Error::custom(format!(
                "{s:?} is longer than the longest duration a setting may have (10 years)"
            )));
        }
        Ok(Human(d))
    }
}

/// A size in bytes written as `"64MiB"`, `"512KB"`, `"1024"` (or a bare integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like \"64MiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            other => {
                return Err(format!(
                    "{s:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= mult && n.is_multiple_of(mult) {
                return write!(f, "{}{unit}", n / mult);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => Size::parse(&s).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(Size::parse("64MiB").unwrap(), Size::mib(64));
        assert_eq!(Size::parse("1KB").unwrap(), Size(1000));
        assert_eq!(Size::parse("12").unwrap(), Size(12));
        assert!(Size::parse("12 parsecs").is_err());
        assert_eq!(Size::mib(512).to_string(), "512MiB");
    }

    #[test]
    fn durations_round_trip() {
        let h: Human = toml::Value::String("250ms".into()).try_into().unwrap();
        assert_eq!(h, Human::millis(250));
        assert_eq!(h.to_string(), "250ms");
    }

    #[test]
    fn durations_past_ten_years_are_refused() {
        let ok: Result<Human, _> = toml::Value::String("3650days".into()).try_into();
        assert_eq!(ok.unwrap(), Human::secs(3650 * 86_400));
        let e = toml::Value::String("100000000000years".into())
            .try_into::<Human>()
            .unwrap_err();
        assert!(e.to_string().contains("longest duration"), "{e}");
    }
}
