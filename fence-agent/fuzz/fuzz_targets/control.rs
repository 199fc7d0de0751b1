//! The control socket's protocol: a request line as the agent reads it (`Request::parse`), and
//! every answer as the CLI reads it (`protocol::decode`). What parses must survive the trip
//! back: `to_line`/`encode` and parsing again give the same value.
#![no_main]

use fence_agent::control::{
    CallError,
    protocol::{DumpReply, Entered, IdentitiesReply, Request, StatusReply, decode, encode},
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

/// Decodes `line` as a `T`; what decodes is encoded and decoded again, to the same value.
fn answer<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(line: &str) {
    match decode::<T>(line) {
        Ok(value) => {
            let wire = encode(&Ok::<_, String>(&value));
            let again = std::str::from_utf8(&wire).expect("encode writes UTF-8");
            let back: T = decode(again.trim_end()).unwrap_or_else(|e| panic!("{again:?} does not decode: {e}"));
            assert_eq!(back, value, "answer changed across encode/decode");
        }
        Err(e) => drop(e.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match Request::parse(line) {
        Ok(request) => {
            let wire = request.to_line();
            let again = std::str::from_utf8(&wire).expect("to_line writes UTF-8");
            assert_eq!(Request::parse(again.trim_end()).as_ref(), Ok(&request), "request changed across to_line/parse");
            let _ = request.root_only();
        }
        Err(e) => drop(e),
    }
    answer::<StatusReply>(line);
    answer::<IdentitiesReply>(line);
    answer::<Entered>(line);
    answer::<DumpReply>(line);
    // A refusal as the agent writes it reads back as the same refusal.
    let refusal = encode::<()>(&Err(line.to_owned()));
    match decode::<Entered>(std::str::from_utf8(&refusal).expect("UTF-8").trim_end()) {
        Err(CallError::Refused(message)) => assert_eq!(message, line, "a refusal changed across encode/decode"),
        other => panic!("a refusal did not decode as one: {other:?}"),
    }
});
