//! Rows -> the cached value, per shape. Each row arrives as Postgres's own JSON rendering of it
//! (`row_to_json`), so every column type is rendered by Postgres itself, in column order.

use super::mapping::Shape;
use bytes::Bytes;

/// What a load found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// A string value (json, json_array, string shapes).
    Value(Bytes),
    /// A hash: field -> value, NULL columns left out.
    Hash(Vec<(Bytes, Bytes)>),
    /// No row: answered as nil and remembered for `negative_ttl`.
    NotFound,
}

/// The batch form of a single-key query: `= $1` becomes `= ANY($1)`, when `$1` appears exactly
/// once and only in that form.
pub fn derive_batch(query: &str) -> Option<String> {
    if query.matches("$1").count() != 1 || query.contains("$2") {
        return None;
    }
    let at = query.find("$1")?;
    let before = query[..at].trim_end();
    before
        .ends_with('=')
        .then(|| format!("{} ANY($1){}", before, &query[at + 2..]))
}

/// The wrapper of a batch query: each row's capture column (as text) beside its JSON text.
pub fn wrap_batch(query: &str, capture: &str) -> String {
    format!(
        "SELECT (q.\"{capture}\")::text, row_to_json(q)::text FROM ({}) AS q",
        query.trim().trim_end_matches(';')
    )
}

/// The wrapper that makes Postgres render each row of `query` as one JSON text.
pub fn wrap(query: &str) -> String {
    format!(
        "SELECT row_to_json(q)::text FROM ({}) AS q",
        query.trim().trim_end_matches(';')
    )
}

fn scalar(v: &serde_json::Value) -> Option<Bytes> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Bytes::from(s.clone())),
        other => Some(Bytes::from(other.to_string())),
    }
}

/// Builds the value of `shape` from the rows' JSON texts.
pub fn encode(shape: Shape, rows: &[String]) -> Result<Loaded, String> {
    let first = match rows.first() {
        Some(r) => r,
        None if shape == Shape::JsonArray => return Ok(Loaded::Value(Bytes::from_static(b"[]"))),
        None => return Ok(Loaded::NotFound),
    };
    match shape {
        Shape::Json => Ok(Loaded::Value(Bytes::from(first.clone()))),
        Shape::JsonArray => {
            let mut out =
                String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
            out.push('[');
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r);
            }
            out.push(']');
            Ok(Loaded::Value(Bytes::from(out)))
        }
        Shape::Hash | Shape::String => {
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(first)
                .map_err(|e| format!("row is not a JSON object: {e}"))?;
            if shape == Shape::String {
                return Ok(match obj.values().next().and_then(scalar) {
                    Some(v) => Loaded::Value(v),
                    None => Loaded::NotFound,
                });
            }
            Ok(Loaded::Hash(
                obj.iter()
                    .filter_map(|(k, v)| scalar(v).map(|v| (Bytes::from(k.clone()), v)))
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_shape_from_postgres_json_rows() {
        let r = rows(&[
            r#"{"id":1,"name":"Lamp","price":12.50,"note":null}"#,
            r#"{"id":2,"name":"Desk","price":99.00,"note":"x"}"#,
        ]);
        assert_eq!(
            encode(Shape::Json, &r),
            Ok(Loaded::Value(Bytes::from(r[0].clone())))
        );
        assert_eq!(
            encode(Shape::JsonArray, &r),
            Ok(Loaded::Value(Bytes::from(format!("[{},{}]", r[0], r[1]))))
        );
        assert_eq!(
            encode(Shape::Hash, &r),
            Ok(Loaded::Hash(vec![
                (Bytes::from("id"), Bytes::from("1")),
                (Bytes::from("name"), Bytes::from("Lamp")),
                (Bytes::from("price"), Bytes::from("12.50")),
            ]))
        );
        assert_eq!(
            encode(Shape::String, &r),
            Ok(Loaded::Value(Bytes::from("1")))
        );
    }

    #[test]
    fn no_rows_is_not_found_except_for_arrays() {
        assert_eq!(encode(Shape::Json, &[]), Ok(Loaded::NotFound));
        assert_eq!(encode(Shape::Hash, &[]), Ok(Loaded::NotFound));
        assert_eq!(
            encode(Shape::JsonArray, &[]),
            Ok(Loaded::Value(Bytes::from_static(b"[]")))
        );
    }

    #[test]
    fn batch_queries_are_derived_from_an_equality_on_the_one_parameter() {
        assert_eq!(
            derive_batch("SELECT * FROM products WHERE id = $1").as_deref(),
            Some("SELECT * FROM products WHERE id = ANY($1)")
        );
        assert_eq!(
            derive_batch("SELECT * FROM p WHERE id=$1 ORDER BY id").as_deref(),
            Some("SELECT * FROM p WHERE id= ANY($1) ORDER BY id")
        );
        assert_eq!(derive_batch("SELECT * FROM p WHERE id > $1"), None);
        assert_eq!(
            derive_batch("SELECT * FROM p WHERE a = $1 AND b = $2"),
            None
        );
    }

    #[test]
    fn the_wrapper_keeps_the_query_whole() {
        assert_eq!(
            wrap("SELECT * FROM products WHERE id = $1;"),
            "SELECT row_to_json(q)::text FROM (SELECT * FROM products WHERE id = $1) AS q"
        );
    }
}
