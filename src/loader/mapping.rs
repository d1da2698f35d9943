//! `[[mapping]]` key patterns with named captures (`product:{id}`, `user:{uid}:orders`), and
//! the other per-mapping settings, compiled once.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Vec<u8>),
    Cap(String),
}

impl std::fmt::Display for KeyPattern {
    /// The pattern as written: `product:{id}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            match p {
                Part::Lit(l) => f.write_str(&String::from_utf8_lossy(l))?,
                Part::Cap(n) => write!(f, "{{{n}}}")?,
            }
        }
        Ok(())
    }
}

/// A key pattern: literals and `{name}` captures; captures bind `$1..$n` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    parts: Vec<Part>,
}

impl KeyPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or("unclosed '{'")?;
                    let name = &rest[1..end];
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(format!(
                            "capture {{{name}}} must be a name of letters, digits and _"
                        ));
                    }
                    if matches!(parts.last(), Some(Part::Cap(_))) {
                        return Err("two captures must be separated by literal text".into());
                    }
                    if parts.iter().any(|p| p == &Part::Cap(name.to_string())) {
                        return Err(format!("capture {{{name}}} appears twice"));
                    }
                    parts.push(Part::Cap(name.to_string()));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if lit.contains('}') {
                        return Err("'}' without '{'".into());
                    }
                    parts.push(Part::Lit(lit.as_bytes().to_vec()));
                    rest = &rest[end..];
                }
            }
        }
        if parts.is_empty() {
            return Err("empty key pattern".into());
        }
        Ok(Self { parts })
    }

    /// Capture names, in parameter order.
    pub fn captures(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Cap(n) => Some(n.as_str()),
                Part::Lit(_) => None,
            })
            .collect()
    }

    /// The key with these capture values (in capture order).
    pub fn render(&self, captures: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut caps = captures.iter();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Cap(_) => out.extend_from_slice(caps.next().copied().unwrap_or_default()),
            }
        }
        out
    }

    /// A Redis glob (for SCAN MATCH) covering every matching key: literals escaped, each
    /// capture a `*`. It may match more (a capture never holds `:`): check with `matches`.
    pub fn glob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => {
                    for &b in l {
                        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                            out.push(b'\\');
                        }
                        out.push(b);
                    }
                }
                Part::Cap(_) => out.push(b'*'),
            }
        }
        out
    }

    /// The text every matching key starts with.
    pub fn prefix(&self) -> &[u8] {
        match self.parts.first() {
            Some(Part::Lit(l)) => l,
            _ => b"",
        }
    }

    /// The captured values of `key` (each non-empty, without `:`, up to the next literal), if
    /// it matches.
    pub fn matches<'k>(&self, key: &'k [u8]) -> Option<Vec<&'k [u8]>> {
        let mut caps = Vec::new();
        let mut pos = 0;
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Lit(l) => {
                    if !key[pos..].starts_with(l) {
                        return None;
                    }
                    pos += l.len();
                }
                Part::Cap(_) => {
                    let end = match self.parts.get(i + 1) {
                        Some(Part::Lit(next)) => pos + find(&key[pos..], next)?,
                        _ => key.len(),
                    };
                    // A capture is one segment: `product:{id}` does not match
                    // `product:151:views` (the seeds' own view counter keys).
                    if end == pos || key[pos..end].contains(&b':') {
                        return None;
                    }
                    caps.push(&key[pos..end]);
                    pos = end;
                }
            }
        }
        (pos == key.len()).then_some(caps)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How rows become the cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One row as a JSON object (Postgres's own JSON rendering of each column).
    Json,
    /// All rows as a JSON array (query-result caching).
    JsonArray,
    /// One row as a Redis hash: column -> value (NULL columns left out).
    Hash,
    /// The first column of the first row.
    String,
}

impl Shape {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "json" => Shape::Json,
            "json_array" => Shape::JsonArray,
            "hash" => Shape::Hash,
            "string" => Shape::String,
            other => {
                return Err(format!(
                    "{other:?} must be one of json, json_array, hash, string"
                ))
            }
        })
    }
}

/// TTL jitter: a fraction of the TTL (`"10%"`) or a duration (`"5s"`), added at random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    None,
    Fraction(f64),
    Up(Duration),
}

impl Jitter {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        let Some(s) = s.map(str::trim) else {
            return Ok(Jitter::None);
        };
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage like \"10%\""))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?} must be between 0% and 100%"));
            }
            return Ok(Jitter::Fraction(v / 100.0));
        }
        humantime::parse_duration(s)
            .map(Jitter::Up)
            .map_err(|_| format!("{s:?} is not a percentage (\"10%\") or a duration (\"5s\")"))
    }

    /// `ttl` plus a random share of the jitter.
    pub fn apply(self, ttl: Duration) -> Duration {
        let extra = match self {
            Jitter::None => return ttl,
            Jitter::Fraction(f) => ttl.mul_f64(f),
            Jitter::Up(d) => d,
        };
        ttl + extra.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_bound_in_order() {
        let p = KeyPattern::parse("user:{uid}:order:{oid}").unwrap();
        assert_eq!(p.captures(), ["uid", "oid"]);
        assert_eq!(
            p.matches(b"user:7:order:99"),
            Some(vec![&b"7"[..], &b"99"[..]])
        );
        assert_eq!(p.matches(b"user:7:order:"), None);
        assert_eq!(p.matches(b"user::order:1"), None);
        assert_eq!(p.matches(b"users:7:order:1"), None);
        let p = KeyPattern::parse("product:{id}").unwrap();
        assert_eq!(p.matches(b"product:42"), Some(vec![&b"42"[..]]));
        assert_eq!(p.prefix(), b"product:");
        assert_eq!(p.render(&[b"42"]), b"product:42");
        let p = KeyPattern::parse("config:site").unwrap();
        assert_eq!(p.matches(b"config:site"), Some(vec![]));
    }

    #[test]
    fn a_capture_does_not_run_across_a_colon() {
        let p = KeyPattern::parse("product:{id}").unwrap();
        assert_eq!(p.matches(b"product:151:views"), None);
        let p = KeyPattern::parse("user:{uid}:orders").unwrap();
        assert_eq!(p.matches(b"user:7:orders"), Some(vec![&b"7"[..]]));
        assert_eq!(p.matches(b"user:7:x:orders"), None);
    }

    #[test]
    fn globs_escape_literals_and_widen_captures() {
        let p = KeyPattern::parse("a*[b]?:{id}:x\\{n}").unwrap();
        assert_eq!(p.glob(), b"a\\*\\[b\\]\\?:*:x\\\\*".to_vec());
        assert_eq!(
            KeyPattern::parse("product:{id}").unwrap().glob(),
            b"product:*"
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(KeyPattern::parse("a:{id").is_err());
        assert!(KeyPattern::parse("a:{x}{y}").is_err());
        assert!(KeyPattern::parse("a:{x}:{x}").is_err());
        assert!(KeyPattern::parse("a:{}").is_err());
        assert!(KeyPattern::parse("a}").is_err());
    }

    #[test]
    fn jitter_adds_at_most_its_share() {
        let j = Jitter::parse(Some("10%")).unwrap();
        for _ in 0..100 {
            let t = j.apply(Duration::from_secs(100));
            assert!(t >= Duration::from_secs(100) && t <= Duration::from_secs(110));
        }
        assert_eq!(
            Jitter::parse(Some("5s")).unwrap(),
            Jitter::Up(Duration::from_secs(5))
        );
        assert!(Jitter::parse(Some("lots")).is_err());
    }
}
