//! Property tests of request parsing: arbitrary bytes never panic, arguments stay in bounds.

use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics_and_stays_in_bounds(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits { max_bulk_len: 1024, max_multibulk_len: 64, max_inline_len: 256 };
        let mut pos = 0;
        while pos < bytes.len() {
            match parse(&bytes[pos..], pos, &limits) {
                Ok(Step::Request(p)) => {
                    prop_assert!(p.span.start == pos && p.span.end <= bytes.len() && p.span.end > pos);
                    let chunk = Bytes::copy_from_slice(&bytes);
                    let r = Request::from_parsed(&chunk, p.clone());
                    prop_assert!(r.argc() >= 1);
                    pos = p.span.end;
                }
                Ok(Step::Skip(n)) => { prop_assert!(n > 0); pos += n; }
                Ok(Step::Incomplete { .. }) | Err(_) => break,
            }
        }
    }

    #[test]
    fn encoded_commands_parse_back_to_their_arguments(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8)) {
        let frame = encode_command(&args);
        match parse(&frame, 0, &Limits::default()).unwrap() {
            Step::Request(p) => {
                prop_assert_eq!(p.span.end, frame.len());
                let r = Request::from_parsed(&frame, p);
                let got: Vec<Vec<u8>> = r.args().map(|a| a.to_vec()).collect();
                prop_assert_eq!(got, args);
            }
            other => prop_assert!(false, "not a request: {:?}", other),
        }
    }
}
