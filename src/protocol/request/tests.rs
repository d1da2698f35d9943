//! Request parsing and encoding against Redis's grammar, limits and error texts.

use super::*;

fn one(input: &[u8]) -> Result<Step, ProtocolError> {
    parse(input, 0, &Limits::default())
}

fn args_of(input: &[u8]) -> Vec<Vec<u8>> {
    let chunk = Bytes::copy_from_slice(input);
    match one(input).unwrap() {
        Step::Request(p) => {
            let r = Request::from_parsed(&chunk, p);
            r.args().map(|a| a.to_vec()).collect()
        }
        other => panic!("not a request: {other:?}"),
    }
}

#[test]
fn multibulk_arguments_are_ranges_into_the_buffer() {
    assert_eq!(
        args_of(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n"),
        vec![b"GET".to_vec(), b"foo".to_vec()]
    );
}

#[test]
fn partial_frames_are_incomplete_not_errors() {
    let full = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n";
    for cut in 0..full.len() {
        assert!(
            matches!(one(&full[..cut]).unwrap(), Step::Incomplete { .. }),
            "cut {cut}"
        );
    }
}

#[test]
fn redis_error_texts_for_malformed_requests() {
    let err = |b: &[u8]| one(b).unwrap_err().to_string();
    assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(
        err(b"*1\r\n:1\r\n"),
        "Protocol error: expected '$', got ':'"
    );
    assert_eq!(err(b"*1\r\n$-2\r\n"), "Protocol error: invalid bulk length");
    assert_eq!(
        err(b"*1\r\n$600000000\r\n"),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        err(b"*99999999999\r\n"),
        "Protocol error: invalid multibulk length"
    );
    assert_eq!(
        err(b"SET \"a b\"c\r\n"),
        "Protocol error: unbalanced quotes in request"
    );
    assert_eq!(
        err(b"*1\r\n*1\r\n"),
        "Protocol error: expected '$', got '*'"
    );
}

#[test]
fn oversized_headers_and_inline_lines_are_rejected_before_their_end() {
    let long = vec![b'a'; 70 * 1024];
    assert_eq!(
        one(&long).unwrap_err().to_string(),
        "Protocol error: too big inline request"
    );
    let mut star = b"*".to_vec();
    star.extend(std::iter::repeat_n(b'1', 70 * 1024));
    assert_eq!(
        one(&star).unwrap_err().to_string(),
        "Protocol error: too big mbulk count string"
    );
}

#[test]
fn inline_commands_follow_redis_quoting() {
    assert_eq!(
        args_of(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r\n"),
        vec![
            b"set".to_vec(),
            b"a b".to_vec(),
            b"c'd".to_vec(),
            b"A\n".to_vec()
        ]
    );
    assert_eq!(args_of(b"PING\n"), vec![b"PING".to_vec()]);
}

#[test]
fn empty_lines_and_zero_length_arrays_are_skipped() {
    assert!(matches!(one(b"\r\n").unwrap(), Step::Skip(2)));
    assert!(matches!(one(b"*0\r\n").unwrap(), Step::Skip(4)));
    assert!(matches!(one(b"*-1\r\n").unwrap(), Step::Skip(5)));
}

#[test]
fn inline_requests_are_reencoded_as_resp() {
    let chunk = Bytes::from_static(b"get k\r\n");
    let Step::Request(p) = one(&chunk).unwrap() else {
        panic!()
    };
    let r = Request::from_parsed(&chunk, p);
    assert_eq!(&r.frame()[..], b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n");
}

#[test]
fn from_args_round_trips() {
    let r = Request::from_args(&["SET", "k", "v"]);
    assert_eq!(r.argc(), 3);
    assert_eq!(r.arg(2), b"v");
    assert!(r.arg_is(0, "set"));
}
