//! The SET options a write-through accepts: those that only set the key's expiry. Options that
//! make the write conditional or return the old value (NX, XX, GET, IFEQ, ...) are refused, so
//! the database is never written without Redis being written too.

use bytes::Bytes;

/// Checks the arguments after `SET key value`; whether they set the expiry (EX, PX, EXAT,
/// PXAT or KEEPTTL). The error names the option refused.
pub fn check(args: &[Bytes]) -> Result<bool, String> {
    let mut expiry = false;
    let mut i = 0;
    while i < args.len() {
        let word = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match word.as_str() {
            "EX" | "PX" | "EXAT" | "PXAT" => {
                let n = args
                    .get(i + 1)
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .and_then(|s| s.parse::<i64>().ok());
                if expiry || n.is_none_or(|n| n <= 0) {
                    return Err("ERR syntax error".into());
                }
                expiry = true;
                i += 2;
            }
            "KEEPTTL" => {
                if expiry {
                    return Err("ERR syntax error".into());
                }
                expiry = true;
                i += 1;
            }
            _ => {
                return Err(format!(
                    "SET option {word} is not supported on a write-through key (EX, PX, EXAT, PXAT and KEEPTTL are)"
                ))
            }
        }
    }
    Ok(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn expiry_options_pass_and_conditional_ones_are_refused() {
        assert_eq!(check(&args(&[])), Ok(false));
        assert_eq!(check(&args(&["ex", "10"])), Ok(true));
        assert_eq!(check(&args(&["KEEPTTL"])), Ok(true));
        assert!(check(&args(&["EX", "0"])).is_err());
        assert!(check(&args(&["EX", "10", "PX", "5"])).is_err());
        assert!(check(&args(&["PX"])).is_err());
        for refused in ["NX", "XX", "GET", "IFEQ"] {
            let e = check(&args(&[refused])).unwrap_err();
            assert!(e.contains(refused), "{e}");
        }
    }
}
