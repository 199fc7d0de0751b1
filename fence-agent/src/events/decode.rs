//! Decoding kernel event records. Records are checked for length and kind; a short or unknown
//! record is reported as such, never a panic.

use fence_common::{EVENT_NET, EventHeader, NetEvent};

/// A decoded kernel record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    Net(NetEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    Truncated {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Net(e) => &e.header,
        }
    }
}

/// Reads a `T` from the start of `bytes` if there are enough of them.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a repr(C) integer-only record for which every bit pattern
    // is valid (callers use only fence_common event types); read_unaligned has no alignment
    // requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    match header.kind {
        EVENT_NET => read::<NetEvent>(bytes)
            .map(KernelEvent::Net)
            .ok_or(DecodeError::Truncated {
                kind: header.kind,
                len: bytes.len(),
                expected: size_of::<NetEvent>(),
            }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_a_net_event() {
        let mut e = NetEvent::default();
        e.header.kind = EVENT_NET;
        e.port = 22;
        assert_eq!(decode(&bytes_of(&e)), Ok(KernelEvent::Net(e)));
    }

    #[test]
    fn rejects_short_truncated_and_unknown_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut e = NetEvent::default();
        e.header.kind = EVENT_NET;
        let b = bytes_of(&e);
        assert!(matches!(
            decode(&b[..70]),
            Err(DecodeError::Truncated { .. })
        ));
        e.header.kind = 200;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::UnknownKind(200)));
    }
}
