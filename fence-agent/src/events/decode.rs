//! Decoding kernel event records. Records are checked for length and kind; a short or unknown
//! record is reported as such, never a panic.

use std::path::Path;

use fence_common::{
    COMPONENT_LEN, DentryPath, EventHeader, EventKind, Mechanism, NetEvent, ObjectEvent, Operation, PATH_COMPONENTS,
    Reason, Verdict,
};

/// A decoded record: from the kernel's ring buffer, or built by the agent (fanotify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Net(NetEvent),
    Object(Box<ObjectEvent>),
    /// A query the agent's resolver refused (made in user space; never in the ring buffer).
    Dns(Box<DnsQueryEvent>),
    /// A request the credential broker refused (made in user space; never in the ring buffer).
    Secret(Box<SecretEvent>),
}

/// A secret request the broker refused: the header (kind `Secret`, operation `SecretGet`,
/// mechanism `Broker`), the secret's name (never a value) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEvent {
    pub header: EventHeader,
    pub name: String,
    pub why: String,
}

/// A DNS query judged by the agent's resolver for a fenced identity: the header (kind
/// `Net`, operation `DnsQuery`, mechanism `Resolver`), the server the process named (the
/// resolver it was steered from), and the question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQueryEvent {
    /// The net record's fields: the server the process sent the query to.
    pub net: NetEvent,
    /// The question's name, as asked (lower case, no trailing dot).
    pub name: String,
    /// The question's type (`A`, `AAAA`, `TXT`...).
    pub qtype: String,
    /// The answer's addresses (audit mode, where the question went upstream).
    pub resolved: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    Truncated { kind: u8, len: usize, expected: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record with an unknown {field} value {value}")]
    UnknownValue { field: &'static str, value: u8 },
}

/// The header's values, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub kind: EventKind,
    pub verdict: Verdict,
    pub operation: Operation,
    pub mechanism: Mechanism,
    pub reason: Reason,
}

impl Head {
    /// The header's values, each one fence's programs write; anything else is an error.
    pub fn of(h: &EventHeader) -> Result<Head, DecodeError> {
        let unknown = |field, value| DecodeError::UnknownValue { field, value };
        Ok(Head {
            kind: EventKind::from_u8(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?,
            verdict: Verdict::from_u8(h.verdict).ok_or(unknown("verdict", h.verdict))?,
            operation: Operation::from_u8(h.operation).ok_or(unknown("operation", h.operation))?,
            mechanism: Mechanism::from_u8(h.mechanism).ok_or(unknown("mechanism", h.mechanism))?,
            reason: Reason::from_u8(h.reason).ok_or(unknown("reason", h.reason))?,
        })
    }
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Net(e) => &e.header,
            KernelEvent::Object(e) => &e.header,
            KernelEvent::Dns(e) => &e.net.header,
            KernelEvent::Secret(e) => &e.header,
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

/// Decodes one record; its header's values are checked ([`Head::of`]).
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    let head = Head::of(&header)?;
    match head.kind {
        EventKind::Net => read::<NetEvent>(bytes).map(KernelEvent::Net).ok_or(DecodeError::Truncated {
            kind: header.kind,
            len: bytes.len(),
            expected: size_of::<NetEvent>(),
        }),
        EventKind::Exec | EventKind::File | EventKind::Unix | EventKind::Escape => read::<ObjectEvent>(bytes)
            .map(|e| KernelEvent::Object(Box::new(e)))
            .ok_or(DecodeError::Truncated { kind: header.kind, len: bytes.len(), expected: size_of::<ObjectEvent>() }),
        // Made by the agent only: the kernel's programs never write it.
        EventKind::Secret => Err(DecodeError::UnknownKind(header.kind)),
    }
}

/// The components of a dentry path, outermost first; `complete` tells whether the walk
/// reached its file system's root.
pub fn components(p: &DentryPath) -> (Vec<String>, bool) {
    let depth = (p.depth as usize).min(PATH_COMPONENTS);
    let names = p.components[..depth]
        .iter()
        .rev()
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect();
    (names, p.complete == 1)
}

/// Fills a [`DentryPath`] from a path (for records the agent builds itself).
pub fn path_into_components(path: &Path, out: &mut DentryPath) {
    let names: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    out.depth = 0;
    out.complete = u32::from(names.len() <= PATH_COMPONENTS);
    for (slot, name) in out.components.iter_mut().zip(names.iter().rev()) {
        *slot = [0; COMPONENT_LEN];
        for (d, s) in slot.iter_mut().zip(name.bytes().take(COMPONENT_LEN - 1)) {
            *d = s;
        }
        out.depth += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with valid values of every field.
    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u8,
            verdict: Verdict::Denied as u8,
            operation: Operation::Connect as u8,
            mechanism: Mechanism::CgroupConnect4 as u8,
            reason: Reason::NoMatchingRule as u8,
            ..EventHeader::default()
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_a_net_event() {
        let mut e = NetEvent { header: header(EventKind::Net), ..NetEvent::default() };
        e.port = 22;
        assert_eq!(decode(&bytes_of(&e)), Ok(KernelEvent::Net(e)));
    }

    #[test]
    fn every_object_kind_decodes() {
        for kind in [EventKind::Exec, EventKind::File, EventKind::Unix, EventKind::Escape] {
            let mut e = ObjectEvent {
                header: header(kind),
                dev: 0,
                rule_dev: 0,
                ino: 7,
                rule_ino: 0,
                nlink: 1,
                name_len: 0,
                name: [0; fence_common::NAME_LEN],
                path: DentryPath::default(),
                actor_exe: DentryPath::default(),
            };
            e.path.depth = 0;
            assert!(matches!(decode(&bytes_of(&e)), Ok(KernelEvent::Object(o)) if o.ino == 7), "kind {kind}");
        }
    }

    #[test]
    fn paths_round_trip_through_components() {
        let mut d = DentryPath::default();
        path_into_components(Path::new("/root/.aws/credentials"), &mut d);
        assert_eq!(components(&d), (vec!["root".into(), ".aws".into(), "credentials".into()], true));
        let deep = Path::new("/a/b/c/d/e/f/g/h/i/j");
        path_into_components(deep, &mut d);
        let (names, complete) = components(&d);
        assert_eq!(names.len(), PATH_COMPONENTS);
        assert!(!complete);
        assert_eq!(names.last().map(String::as_str), Some("j"));
    }

    #[test]
    fn rejects_short_truncated_and_unknown_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut e = NetEvent { header: header(EventKind::Net), ..NetEvent::default() };
        let b = bytes_of(&e);
        assert!(matches!(decode(&b[..size_of::<EventHeader>() + 6]), Err(DecodeError::Truncated { .. })));
        e.header.kind = 200;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::UnknownKind(200)));
        e.header.kind = EventKind::Net as u8;
        e.header.mechanism = 99;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::UnknownValue { field: "mechanism", value: 99 }));
    }
}
