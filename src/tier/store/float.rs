//! INCRBYFLOAT arithmetic as Redis does it on x86-64: glibc `strtold` into an 80-bit `long double`
//! (64-bit significand), one rounded addition, and `%.17Lf` with trailing zeros removed.
//!
//! `f64` cannot reproduce Redis's replies (`10.50 + 0.1` is `10.6` in Redis but
//! `10.59999999999999964` with doubles), so the format is emulated in software: exact big-integer
//! conversions in and out, round-half-even everywhere, as the hardware and glibc do.

/// Longest input `string2ld` accepts (`MAX_LONG_DOUBLE_CHARS`).
const MAX_CHARS: usize = 5 * 1024;
/// Largest binary exponent of the top bit (values must stay below 2^16384).
const MAX_TOP_EXP: i64 = 16383;
/// Values at or below 2^-16446 (half the smallest subnormal) underflow to zero, which Redis rejects.
const MIN_TOP_EXP: i64 = -16446;

/// A finite extended-precision value: `sig * 2^exp`, `sig` normalised (top bit set) or zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ld {
    neg: bool,
    sig: u64,
    exp: i64,
}

/// What `strtold` produced: a finite value, or an infinity (accepted, then rejected by the sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Num {
    Finite(Ld),
    Inf,
}

pub(super) const ZERO: Num = Num::Finite(Ld {
    neg: false,
    sig: 0,
    exp: 0,
});

/// Unsigned big integer, little-endian base 2^32 limbs: just what exact conversion needs.
#[derive(Debug, Clone)]
struct Big(Vec<u32>);

impl Big {
    fn from_u64(v: u64) -> Self {
        let mut b = Big(vec![v as u32, (v >> 32) as u32]);
        b.trim();
        b
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn mul_add(&mut self, m: u32, a: u32) {
        let mut carry = u64::from(a);
        for l in &mut self.0 {
            let t = u64::from(*l) * u64::from(m) + carry;
            *l = t as u32;
            carry = t >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
    }

    /// Divides in place; returns the remainder.
    fn div_rem(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for l in self.0.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / u64::from(d)) as u32;
            rem = cur % u64::from(d);
        }
        self.trim();
        rem as u32
    }

    fn shl(&mut self, bits: u64) {
        let (limbs, bits) = ((bits / 32) as usize, (bits % 32) as u32);
        if bits > 0 {
            let mut carry = 0u32;
            for l in &mut self.0 {
                let next = *l >> (32 - bits);
                *l = (*l << bits) | carry;
                carry = next;
            }
            if carry != 0 {
                self.0.push(carry);
            }
        }
        self.0.splice(0..0, std::iter::repeat_n(0, limbs));
    }

    fn bit_len(&self) -> u64 {
        match self.0.last() {
            Some(&top) => self.0.len() as u64 * 32 - u64::from(top.leading_zeros()),
            None => 0,
        }
    }

    /// Multiplies by `base^n`, `base^chunk` fitting a limb.
    fn mul_pow(&mut self, base: u32, chunk: u32, mut n: u64) {
        while n > 0 {
            let k = n.min(u64::from(chunk)) as u32;
            self.mul_add(base.pow(k), 0);
            n -= u64::from(k);
        }
    }

    /// The top bits as `(q, shift, sticky)`: `self ≈ q << shift`, `sticky` if bits were dropped.
    fn top128(&self) -> (u128, u64, bool) {
        let shift = self.bit_len().saturating_sub(128);
        let (mut q, mut sticky) = (0u128, false);
        for (i, &l) in self.0.iter().enumerate() {
            let p = i as i64 * 32 - shift as i64;
            if p <= -32 {
                sticky |= l != 0;
            } else if p < 0 {
                q |= u128::from(l >> -p);
                sticky |= l & ((1u32 << -p) - 1) != 0;
            } else {
                q |= u128::from(l) << p;
            }
        }
        (q, shift, sticky)
    }

    fn into_decimal(mut self) -> String {
        let mut chunks = Vec::new();
        while !self.0.is_empty() {
            chunks.push(self.div_rem(1_000_000_000));
        }
        let mut s = chunks
            .pop()
            .map_or_else(|| "0".to_string(), |c| c.to_string());
        for c in chunks.iter().rev() {
            s.push_str(&format!("{c:09}"));
        }
        s
    }
}

/// Rounds `q * 2^exp` (plus a sticky fraction below `q`'s last bit) to 64 bits, half to even.
/// Callers pass at least 66 significant bits whenever `sticky` can be set.
fn round(neg: bool, q: u128, exp: i64, sticky: bool) -> Ld {
    if q == 0 {
        return Ld {
            neg,
            sig: 0,
            exp: 0,
        };
    }
    let len = 128 - i64::from(q.leading_zeros());
    if len <= 64 {
        let up = 64 - len;
        return Ld {
            neg,
            sig: (q << up) as u64,
            exp: exp - up,
        };
    }
    let sh = (len - 64) as u32;
    let mut kept = q >> sh;
    let rem = q & ((1u128 << sh) - 1);
    let half = 1u128 << (sh - 1);
    if rem > half || (rem == half && (sticky || kept & 1 == 1)) {
        kept += 1;
    }
    let (sig, exp) = if kept >> 64 != 0 {
        ((kept >> 1) as u64, exp + i64::from(sh) + 1)
    } else {
        (kept as u64, exp + i64::from(sh))
    };
    Ld { neg, sig, exp }
}

/// Rounds a big `n * 2^exp` and checks it fits a `long double` (as `strtold` reports `ERANGE`).
fn finish(neg: bool, n: &Big, exp: i64, sticky: bool) -> Option<Num> {
    let (q, shift, dropped) = n.top128();
    let ld = round(neg, q, exp + shift as i64, sticky || dropped);
    let top = ld.exp + 63;
    if ld.sig == 0 {
        return Some(Num::Finite(ld));
    }
    if !(MIN_TOP_EXP..=MAX_TOP_EXP).contains(&top) || (top == MIN_TOP_EXP && ld.sig == 1 << 63) {
        return None;
    }
    Some(Num::Finite(ld))
}

/// Digits of `s` in `radix` with at most one '.', then the count of digits after the point.
fn mantissa(s: &[u8], radix: u32) -> Option<(Vec<u8>, i64, &[u8])> {
    let mut digits = Vec::new();
    let (mut frac, mut seen_point, mut i) = (0i64, false, 0);
    while let Some(&c) = s.get(i) {
        if c == b'.' && !seen_point {
            seen_point = true;
        } else if let Some(d) = (c as char).to_digit(radix) {
            digits.push(d as u8);
            frac += i64::from(seen_point);
        } else {
            break;
        }
        i += 1;
    }
    (!digits.is_empty()).then_some((digits, frac, &s[i..]))
}

/// An exponent suffix (`e-12`, `p+3`); saturates, which is safe as bounds are checked after.
fn exponent(s: &[u8], marker: u8) -> Option<i64> {
    let Some((&m, rest)) = s.split_first() else {
        return Some(0);
    };
    if m.to_ascii_lowercase() != marker {
        return None;
    }
    let (neg, digits) = match rest.split_first() {
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits.iter().fold(0i64, |acc, &d| {
        (acc * 10 + i64::from(d - b'0')).min(1 << 40)
    });
    Some(if neg { -v } else { v })
}

/// Parses like Redis's `string2ld`: the whole string must be one `strtold` number, no leading
/// space, NaN rejected, overflow and underflow to zero rejected.
pub(super) fn parse(s: &[u8]) -> Option<Num> {
    if s.is_empty() || s.len() >= MAX_CHARS || matches!(s[0], b' ' | b'\t'..=b'\r') {
        return None;
    }
    // strtold sees a C string: it stops at a NUL, which then counts as the end of the input.
    let s = s.split(|&c| c == 0).next().unwrap_or_default();
    if s.is_empty() {
        return Some(ZERO);
    }
    let (neg, body) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        return Some(Num::Inf);
    }
    let hex = body.len() > 2 && body[0] == b'0' && body[1].eq_ignore_ascii_case(&b'x');
    if hex {
        let (digits, frac, rest) = mantissa(&body[2..], 16)?;
        let exp = exponent(rest, b'p')?.checked_sub(frac * 4)?;
        let mut n = Big(Vec::new());
        for d in digits.iter().skip_while(|&&d| d == 0) {
            n.mul_add(16, u32::from(*d));
        }
        let top = n.bit_len() as i64 + exp - 1;
        if n.0.is_empty() {
            return Some(ZERO);
        }
        if !(MIN_TOP_EXP - 1..=MAX_TOP_EXP + 1).contains(&top) {
            return None;
        }
        return finish(neg, &n, exp, false);
    }
    let (digits, frac, rest) = mantissa(body, 10)?;
    let exp10 = exponent(rest, b'e')? - frac;
    let Some(first) = digits.iter().position(|&d| d != 0) else {
        return Some(ZERO);
    };
    let end = digits
        .iter()
        .rposition(|&d| d != 0)
        .map_or(first, |e| e + 1);
    // Trailing zeros move into the exponent: value = digits[first..end] * 10^exp10.
    let exp10 = exp10 + (digits.len() - end) as i64;
    let digits = &digits[first..end];
    let nd = digits.len() as i64;
    // 10^(nd-1+exp10) <= value < 10^(nd+exp10); outside these bounds it surely overflows
    // (LDBL_MAX ~ 1.19e4932) or underflows (2^-16446 ~ 1.8e-4951), inside them the exact check decides.
    if nd - 1 + exp10 > 4932 {
        return None;
    }
    if nd + exp10 < -4951 {
        return None;
    }
    let mut n = Big(Vec::new());
    for chunk in digits.chunks(9) {
        let v = chunk.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d));
        n.mul_add(10u32.pow(chunk.len() as u32), v);
    }
    if exp10 >= 0 {
        n.mul_pow(10, 9, exp10 as u64);
        return finish(neg, &n, 0, false);
    }
    // n / 10^q = (n * 2^k / 5^q) * 2^(-q-k), with k large enough that the quotient keeps at
    // least 70 bits; dividing by 5^q chunk by chunk is exact (floor of floors) and any remainder
    // is the sticky bit.
    let q = exp10.unsigned_abs();
    let five_bits = q * 2322 / 1000 + 1;
    let k = (five_bits + 70).saturating_sub(n.bit_len());
    n.shl(k);
    let mut sticky = false;
    let mut left = q;
    while left > 0 {
        let step = left.min(13) as u32;
        sticky |= n.div_rem(5u32.pow(step)) != 0;
        left -= u64::from(step);
    }
    finish(neg, &n, -(q as i64) - k as i64, sticky)
}

/// `a + b` rounded once to 64 bits; `None` when it overflows or either side is infinite (Redis
/// then replies "increment would produce NaN or Infinity").
pub(super) fn add(a: Num, b: Num) -> Option<Ld> {
    let (Num::Finite(a), Num::Finite(b)) = (a, b) else {
        return None;
    };
    if b.sig == 0 {
        return Some(a);
    }
    if a.sig == 0 {
        return Some(b);
    }
    let (a, b) = if (a.exp, a.sig) >= (b.exp, b.sig) {
        (a, b)
    } else {
        (b, a)
    };
    // 62 spare low bits: aligned `b` loses bits only when far smaller than `a`, and then one
    // sticky bit in the last place rounds exactly as the lost bits would.
    let wide_a = u128::from(a.sig) << 62;
    let d = (a.exp - b.exp) as u64;
    let wide_b = if d >= 127 {
        1
    } else {
        let full = u128::from(b.sig) << 62;
        let kept = full >> d;
        kept | u128::from(kept << d != full)
    };
    let (neg, sum) = if a.neg == b.neg {
        (a.neg, wide_a + wide_b)
    } else if wide_a >= wide_b {
        (a.neg, wide_a - wide_b)
    } else {
        (b.neg, wide_b - wide_a)
    };
    let r = round(neg, sum, a.exp - 62, false);
    (r.sig == 0 || r.exp + 63 <= MAX_TOP_EXP).then_some(r)
}

/// `%.17Lf`, then trailing zeros (and a bare point) removed, `-0` written `0`: Redis's
/// `ld2string(.., LD_STR_HUMAN)`.
pub(super) fn format(v: Ld) -> String {
    let mut s = String::new();
    if v.neg {
        s.push('-');
    }
    if v.exp >= 0 {
        let mut n = Big::from_u64(v.sig);
        n.shl(v.exp as u64);
        s.push_str(&n.into_decimal());
    } else {
        const SCALE: u128 = 100_000_000_000_000_000; // 10^17
        let shift = v.exp.unsigned_abs();
        // sig * 10^17 < 2^121, so it fits; at 2^-128 and below it rounds to zero.
        let q = if shift >= 128 {
            0
        } else {
            let t = u128::from(v.sig) * SCALE;
            let q = t >> shift;
            let rem = t - (q << shift);
            let half = 1u128 << (shift - 1);
            q + u128::from(rem > half || (rem == half && q & 1 == 1))
        };
        s.push_str(&format!("{}.{:017}", q / SCALE, q % SCALE));
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    if s == "-0" {
        s.remove(0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: &str, b: &str) -> Option<String> {
        let a = parse(a.as_bytes())?;
        let b = parse(b.as_bytes())?;
        Some(add(a, b).map_or_else(|| "inf".to_string(), format))
    }

    #[test]
    fn sums_match_redis_long_double_replies() {
        // Each expectation is what redis-server 7.0 on x86-64 replied.
        let cases = [
            ("10.50", "0.1", "10.6"),
            ("0.1", "0.2", "0.3"),
            ("1.6", "3.0e3", "3001.60000000000000009"),
            ("3001.60000000000000009", "0x10", "3017.60000000000000009"),
            ("10.6", "-5.0e3", "-4989.39999999999999991"),
            ("5.0e3", "2.0e2", "5200"),
            ("0.3", "1e20", "100000000000000000000"),
            ("0", "-0.0000000000000000001", "0"),
            ("0", "0.000000000000000015", "0.00000000000000002"),
            ("0", "0.000000000000000025", "0.00000000000000002"),
            ("0", "0.000000000000000005", "0"),
            (
                "0",
                "123456789012345678901234567890",
                "123456789012345678899921813504",
            ),
            ("0", "0x.8", "0.5"),
            ("0", "0x.8p1", "1"),
            ("0", "1.", "1"),
            ("0", "-.5E+1", "-5"),
            ("0", "3.6e-4951", "0"),
        ];
        for (a, b, want) in cases {
            assert_eq!(sum(a, b).as_deref(), Some(want), "{a} + {b}");
        }
        let big = sum("0", "1e400").unwrap();
        assert!(big.starts_with("10000000000000000000281880683947586514586453433629"));
        assert_eq!(big.len(), 401);
    }

    #[test]
    fn strtold_edge_inputs_are_accepted_or_rejected_like_redis() {
        for bad in [
            "",
            " 1",
            "1 ",
            "abc",
            "nan",
            "nan(123)",
            "1e",
            ".",
            "0x",
            "1e-4951",
            "1e5000",
            "1e-5000",
            "1.18973149535723176509e+4932",
            "0x1p16384",
            "+-1",
            "1.2.3",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
        for good in [
            "inf",
            "-Infinity",
            "1.18973149535723176502e+4932",
            "0x1p16383",
            "1\0x",
        ] {
            assert!(parse(good.as_bytes()).is_some(), "{good:?}");
        }
        assert_eq!(parse(b"inf").and_then(|i| add(i, ZERO)), None);
        assert_eq!(
            sum("1.18973149535723176502e+4932", "1e4932").as_deref(),
            Some("inf")
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn sums_agree_with_f64_and_never_panic(
                a in "[-+]?[0-9]{0,12}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,2})?",
                b in "[-+]?[0-9]{0,12}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,2})?",
                junk in prop::collection::vec(any::<u8>(), 0..40),
            ) {
                let _ = parse(&junk).and_then(|j| add(j, ZERO)).map(format);
                let (Some(x), Some(y)) = (parse(a.as_bytes()), parse(b.as_bytes())) else {
                    return Ok(());
                };
                let text = format(add(x, y).unwrap());
                let (fa, fb) = (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());
                let want = fa + fb;
                let got: f64 = text.parse().unwrap();
                // f64 rounds each input by up to half an ulp before adding: under cancellation the
                // error is relative to the inputs, not to the (small) result.
                // Redis prints 17 decimals in fixed point, so anything below 1e-17 is rounded away.
                let tolerance = 4.0 * f64::EPSILON * (fa.abs() + fb.abs()).max(want.abs()) + 1e-17;
                prop_assert!((got - want).abs() <= tolerance, "{a} + {b} = {text}, f64 {want}");
                prop_assert!(!text.ends_with('0') || !text.contains('.'));
            }
        }
    }
}
