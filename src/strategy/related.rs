//! Related-key invalidation: a mapping's `invalidates` templates filled from a written key's
//! captures and from its row as it was before and after the write.

use crate::loader::{KeyPattern, Mapping};
use bytes::Bytes;
use serde_json::{Map, Value};

/// Whether some template needs a capture that the key does not have (so rows must be read).
pub fn needs_rows(m: &Mapping) -> bool {
    let own = m.pattern.captures();
    m.write
        .invalidates
        .iter()
        .any(|t| t.captures().iter().any(|c| !own.contains(c)))
}

/// A row's JSON object (as `row_to_json` renders it), or its Redis hash, as field -> text.
pub fn fields(row: &str) -> Option<Map<String, Value>> {
    serde_json::from_str(row).ok()
}

fn text(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

/// The keys `m`'s templates name for a write of a key with these captures, once per row given
/// (`None` rows stand for "no row": only key captures are used). A template whose capture is
/// in neither the key nor the row names no key. Deduplicated, in template order.
pub fn keys(m: &Mapping, captures: &[Bytes], rows: &[Option<&Map<String, Value>>]) -> Vec<Bytes> {
    let names = m.pattern.captures();
    let mut out: Vec<Bytes> = Vec::new();
    for t in &m.write.invalidates {
        for row in rows {
            let lookup = |name: &str| -> Option<Vec<u8>> {
                if let Some(i) = names.iter().position(|n| *n == name) {
                    return captures.get(i).map(|c| c.to_vec());
                }
                row.and_then(|r| r.get(name)).and_then(text)
            };
            if let Some(k) = render(t, lookup) {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

fn render(t: &KeyPattern, lookup: impl Fn(&str) -> Option<Vec<u8>>) -> Option<Bytes> {
    let values: Vec<Vec<u8>> = t
        .captures()
        .iter()
        .map(|c| lookup(c))
        .collect::<Option<_>>()?;
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    Some(Bytes::from(t.render(&refs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_captures_from_the_key_then_the_row() {
        let t = KeyPattern::parse("products:category:{category}").unwrap();
        let old = fields(r#"{"id":42,"category":"books"}"#).unwrap();
        let key = |name: &str| (name == "id").then(|| b"42".to_vec());
        assert_eq!(render(&t, key), None, "no row, no category: no key");
        let from_row = |name: &str| old.get(name).and_then(text);
        assert_eq!(
            render(&t, from_row),
            Some(Bytes::from_static(b"products:category:books"))
        );
        let t = KeyPattern::parse("orders:{id}:by:{region}").unwrap();
        let row = fields(r#"{"region":"eu","price":12}"#).unwrap();
        let both = |name: &str| match name {
            "id" => Some(b"42".to_vec()),
            n => row.get(n).and_then(text),
        };
        assert_eq!(
            render(&t, both),
            Some(Bytes::from_static(b"orders:42:by:eu"))
        );
    }
}
