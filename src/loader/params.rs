//! Captured key text -> query parameters of the types Postgres reports for the prepared
//! statement. A capture that does not convert is refused before any query runs.

use bytes::{BufMut, BytesMut};
use std::error::Error;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// One converted parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Text(String),
    Uuid([u8; 16]),
    /// Days since 2000-01-01 (Postgres's binary date).
    Date(i32),
    /// Decimal text, sent in Postgres's binary numeric form.
    Numeric(String),
}

/// Whether captures can be converted to `ty` (checked when a mapping's query is prepared).
pub fn supported(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::BOOL,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UUID,
        Type::DATE,
        Type::NUMERIC,
    ]
    .contains(ty)
}

/// Converts one capture to `ty`; the error says why, for the client's `-ERR`.
pub fn convert(ty: &Type, raw: &[u8]) -> Result<Param, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not UTF-8".to_string())?;
    let bad = || format!("{text:?} is not a valid {}", ty.name());
    Ok(match *ty {
        Type::INT2 => Param::I16(text.parse().map_err(|_| bad())?),
        Type::INT4 => Param::I32(text.parse().map_err(|_| bad())?),
        Type::INT8 => Param::I64(text.parse().map_err(|_| bad())?),
        Type::FLOAT4 => Param::F32(text.parse().map_err(|_| bad())?),
        Type::FLOAT8 => Param::F64(text.parse().map_err(|_| bad())?),
        Type::BOOL => Param::Bool(match text.to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => true,
            "f" | "false" | "0" | "no" | "off" => false,
            _ => return Err(bad()),
        }),
        Type::UUID => Param::Uuid(uuid(text).ok_or_else(bad)?),
        Type::DATE => Param::Date(date(text).ok_or_else(bad)?),
        Type::NUMERIC => {
            numeric_parts(text).ok_or_else(bad)?;
            Param::Numeric(text.to_string())
        }
        _ => Param::Text(text.to_string()),
    })
}

fn uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 || s.len() != 32 && s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `YYYY-MM-DD` -> days since 2000-01-01 (proleptic Gregorian).
fn date(s: &str) -> Option<i32> {
    let mut it = s.splitn(3, '-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), relative to 1970-01-01, then to 2000-01-01.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let unix_days = era * 146_097 + doe - 719_468;
    i32::try_from(unix_days - 10_957).ok()
}

/// (negative, integer digits, fraction digits) of a plain decimal.
fn numeric_parts(s: &str) -> Option<(bool, &str, &str)> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((neg, int, frac))
}

/// Postgres's binary numeric: base-10000 digits with weight, sign and display scale.
fn encode_numeric(s: &str, out: &mut BytesMut) -> Result<(), Box<dyn Error + Sync + Send>> {
    let (neg, int, frac) = numeric_parts(s).ok_or("not a decimal")?;
    let int = int.trim_start_matches('0');
    let pad_int = (4 - int.len() % 4) % 4;
    let int_digits: String = "0".repeat(pad_int) + int;
    let pad_frac = (4 - frac.len() % 4) % 4;
    let frac_digits: String = frac.to_string() + &"0".repeat(pad_frac);
    let mut groups: Vec<i16> = Vec::new();
    for chunk in int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
    {
        groups.push(std::str::from_utf8(chunk)?.parse()?);
    }
    let mut weight = (int_digits.len() / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if neg && !groups.is_empty() { 0x4000 } else { 0 });
    out.put_u16(frac.len() as u16);
    for g in groups {
        out.put_i16(g);
    }
    Ok(())
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Uuid(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            Param::Date(d) => {
                out.put_i32(*d);
                Ok(IsNull::No)
            }
            Param::Numeric(s) => {
                encode_numeric(s, out)?;
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        supported(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_convert_to_the_statement_types() {
        assert_eq!(convert(&Type::INT4, b"42"), Ok(Param::I32(42)));
        assert_eq!(convert(&Type::INT8, b"-7"), Ok(Param::I64(-7)));
        assert_eq!(convert(&Type::BOOL, b"true"), Ok(Param::Bool(true)));
        assert_eq!(
            convert(&Type::TEXT, b"lamps"),
            Ok(Param::Text("lamps".into()))
        );
        assert_eq!(convert(&Type::DATE, b"2000-01-02"), Ok(Param::Date(1)));
        assert_eq!(convert(&Type::DATE, b"1999-12-31"), Ok(Param::Date(-1)));
        assert_eq!(convert(&Type::DATE, b"2024-02-29"), Ok(Param::Date(8825)));
        assert!(convert(&Type::UUID, b"6f1c2b1e-0000-4000-8000-000000000001").is_ok());
        assert!(convert(&Type::NUMERIC, b"12.50").is_ok());
    }

    #[test]
    fn bad_captures_say_why() {
        assert_eq!(
            convert(&Type::INT4, b"abc").unwrap_err(),
            "\"abc\" is not a valid int4"
        );
        assert!(convert(&Type::INT2, b"99999").is_err());
        assert!(convert(&Type::UUID, b"not-a-uuid").is_err());
        assert!(convert(&Type::DATE, b"2023-02-29").is_err());
        assert!(convert(&Type::NUMERIC, b"1e5").is_err());
    }

    #[test]
    fn numerics_use_base_10000_groups() {
        let mut out = BytesMut::new();
        encode_numeric("12345.678", &mut out).unwrap();
        // 2 groups before the point (1, 2345), 1 after (6780); weight 1; scale 3.
        assert_eq!(
            &out[..],
            &[0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]
        );
        let mut out = BytesMut::new();
        encode_numeric("-0.5", &mut out).unwrap();
        assert_eq!(&out[..], &[0, 1, 0xff, 0xff, 0x40, 0, 0, 1, 0x13, 0x88]);
    }
}
