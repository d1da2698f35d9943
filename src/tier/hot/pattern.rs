//! Key patterns of `[[cache]]` rules: Redis glob syntax (`*`, `?`, `[abc]`, `[^a-z]`, `\x`),
//! with a fast path for the common `prefix*` form.

/// A compiled key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `prefix*` with no other special characters: a `starts_with` test.
    Prefix(Vec<u8>),
    /// Anything else: glob matching.
    Glob(Vec<u8>),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let b = text.as_bytes();
        // Check brackets are closed so a typo is reported at start, not silently never matched.
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'[' => {
                    let mut j = i + 1;
                    if b.get(j) == Some(&b'^') {
                        j += 1;
                    }
                    // A `]` right after `[` or `[^` is a literal.
                    if b.get(j) == Some(&b']') {
                        j += 1;
                    }
                    while j < b.len() && b[j] != b']' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    if j >= b.len() {
                        return Err("unclosed '[' in pattern".into());
                    }
                    i = j + 1;
                }
                _ => i += 1,
            }
        }
        let special = |c: &u8| matches!(c, b'*' | b'?' | b'[' | b'\\');
        match b.split_last() {
            Some((b'*', head)) if !head.iter().any(special) => Ok(Pattern::Prefix(head.to_vec())),
            _ if !b.iter().any(special) => Ok(Pattern::Glob(b.to_vec())),
            _ => Ok(Pattern::Glob(b.to_vec())),
        }
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Pattern::Prefix(p) => key.starts_with(p),
            Pattern::Glob(g) => glob(g, key),
        }
    }

    /// Whether the pattern matches one key only (no wildcard, no escape).
    pub fn is_literal(&self) -> bool {
        matches!(self, Pattern::Glob(g) if !g.iter().any(|c| matches!(c, b'*' | b'?' | b'[' | b'\\')))
    }

    /// The literal prefix every matching key starts with (for CLIENT TRACKING BCAST PREFIX).
    pub fn literal_prefix(&self) -> &[u8] {
        match self {
            Pattern::Prefix(p) => p,
            Pattern::Glob(g) => {
                let end = g
                    .iter()
                    .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
                    .unwrap_or(g.len());
                &g[..end]
            }
        }
    }
}

/// Redis's `stringmatchlen` semantics, iterative with backtracking on the last `*`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after `]`).
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        first = false;
        if p[i] == b'\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Pattern::parse(p).unwrap().matches(k.as_bytes())
    }

    #[test]
    fn prefix_patterns_take_the_fast_path() {
        assert_eq!(
            Pattern::parse("product:*").unwrap(),
            Pattern::Prefix(b"product:".to_vec())
        );
        assert!(m("product:*", "product:42"));
        assert!(!m("product:*", "products:42"));
    }

    #[test]
    fn globs_follow_redis_rules() {
        assert!(m("user:*:profile", "user:7:profile"));
        assert!(!m("user:*:profile", "user:7:settings"));
        assert!(m("h?llo", "hello") && m("h[ae]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-c]t", "hbt") && !m("h[a-c]t", "hdt"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("*", "") && m("exact", "exact") && !m("exact", "exactly"));
        assert!(m("*a*b*", "xxaxxbxx"));
    }

    #[test]
    fn literal_prefixes_feed_tracking() {
        assert_eq!(
            Pattern::parse("product:*").unwrap().literal_prefix(),
            b"product:"
        );
        assert_eq!(
            Pattern::parse("user:*:profile").unwrap().literal_prefix(),
            b"user:"
        );
        assert_eq!(Pattern::parse("*:x").unwrap().literal_prefix(), b"");
    }

    #[test]
    fn unclosed_brackets_are_rejected() {
        assert!(Pattern::parse("a[b").is_err());
        assert!(Pattern::parse("a[]b]").is_ok());
    }
}
