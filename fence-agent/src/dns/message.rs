//! DNS messages through `hickory-proto`: the client's query classified, the question forwarded,
//! answers checked and read, local answers built. Nothing here reads the wire by hand.

use std::{collections::HashSet, net::IpAddr};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record},
    serialize::binary::{BinDecodable as _, BinDecoder},
};

/// The longest CNAME chain followed from the question name (links), as resolvers commonly bound
/// it; addresses past it are not learned.
pub const MAX_CNAME_CHAIN: usize = 16;

/// The smallest UDP payload every DNS client accepts (RFC 1035 4.2.1).
const MIN_UDP_PAYLOAD: u16 = 512;

/// The EDNS buffer size the resolver advertises in its own answers (the DNS flag day 2020 value).
const LOCAL_EDNS_PAYLOAD: u16 = 1232;

/// A client's query with exactly one question, as the engine works with it.
#[derive(Debug, Clone)]
pub(crate) struct ClientQuery {
    pub metadata: Metadata,
    pub query: Query,
    pub edns: Option<Edns>,
    /// The question name, lower-case, without the trailing dot (the root is ".").
    pub qname: String,
}

/// What to do with a client's input.
#[derive(Debug)]
pub(crate) enum Parsed {
    Query(ClientQuery),
    /// Answer with these bytes (FORMERR, NOTIMP) and stop.
    Reject(Vec<u8>),
    /// Not a query (a response, or not even a header): no answer.
    Drop,
}

/// Classifies a client's input (see the module doc of `dns` for the answers).
pub(crate) fn parse_query(bytes: &[u8]) -> Parsed {
    let message = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return header_only(bytes),
    };
    if message.message_type != MessageType::Query {
        return Parsed::Drop;
    }
    if message.op_code != OpCode::Query {
        return reject(message.id, message.op_code, ResponseCode::NotImp);
    }
    let Message { metadata, mut queries, edns, .. } = message;
    let (Some(query), true) = (queries.pop(), queries.is_empty()) else {
        return reject(metadata.id, metadata.op_code, ResponseCode::FormErr);
    };
    let qname = normalize(query.name());
    Parsed::Query(ClientQuery { metadata, query, edns, qname })
}

/// Input whose message does not parse: FORMERR if at least its header is a query's.
fn header_only(bytes: &[u8]) -> Parsed {
    match Header::read(&mut BinDecoder::new(bytes)) {
        Ok(h) if h.metadata.message_type == MessageType::Query => {
            reject(h.metadata.id, h.metadata.op_code, ResponseCode::FormErr)
        }
        _ => Parsed::Drop,
    }
}

fn reject(id: u16, op_code: OpCode, code: ResponseCode) -> Parsed {
    match Message::error_msg(id, op_code, code).to_vec() {
        Ok(bytes) => Parsed::Reject(bytes),
        Err(_) => Parsed::Drop,
    }
}

/// A name as [`crate::dns::Decide`] sees it: lower-case ASCII (non-printable bytes escaped,
/// IDNs in their `xn--` form), no trailing dot; the root is ".".
pub(crate) fn normalize(name: &Name) -> String {
    let ascii = name.to_lowercase().to_ascii();
    match ascii.strip_suffix('.') {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => ascii,
    }
}

/// The question as forwarded: a fresh id, the client's RD, CD and AD flags and its EDNS OPT
/// record (buffer size, DO bit, options), nothing else of the client's message.
pub(crate) fn upstream_query(q: &ClientQuery, id: u16) -> Option<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.metadata.authentic_data = q.metadata.authentic_data;
    m.add_query(q.query.clone());
    if let Some(edns) = &q.edns {
        m.set_edns(edns.clone());
    }
    m.to_vec().ok()
}

/// Whether `reply` is the answer to the question `query` sent with `id`. An error answer with no
/// question section (as some servers send FORMERR or NOTIMP) counts.
pub(crate) fn answers(reply: &Message, id: u16, query: &Query) -> bool {
    if reply.message_type != MessageType::Response || reply.id != id {
        return false;
    }
    match reply.queries.as_slice() {
        [q] => {
            q.name() == query.name() && q.query_type() == query.query_type() && q.query_class() == query.query_class()
        }
        [] => reply.response_code != ResponseCode::NoError,
        _ => false,
    }
}

/// A locally built answer to `q` with `code` (REFUSED, NXDOMAIN, SERVFAIL): the question, RA,
/// and an OPT record if the client sent one.
pub(crate) fn local_answer(q: &ClientQuery, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.add_query(q.query.clone());
    if let Some(client) = &q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(LOCAL_EDNS_PAYLOAD).set_dnssec_ok(client.flags().dnssec_ok);
        m.set_edns(edns);
    }
    m.to_vec().ok()
}

/// The largest UDP answer the client takes: its EDNS buffer size, at least 512 bytes.
pub(crate) fn udp_limit(q: &ClientQuery) -> usize {
    usize::from(q.edns.as_ref().map_or(MIN_UDP_PAYLOAD, |e| e.max_payload().max(MIN_UDP_PAYLOAD)))
}

/// `reply` cut to its header and question, with TC set and the client's `id`, and an OPT record
/// without options (buffer size, version and DO of the upstream's) if it had one: the client
/// asks again over TCP.
pub(crate) fn truncated(reply: &Message, id: u16) -> Option<Vec<u8>> {
    let mut t = reply.truncate();
    t.metadata.id = id;
    if let Some(upstream) = &reply.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(upstream.max_payload())
            .set_version(upstream.version())
            .set_dnssec_ok(upstream.flags().dnssec_ok);
        t.set_edns(edns);
    }
    t.to_vec().ok()
}

/// The upstream's answer with the client's id in place of the one the engine chose: the ID is
/// the message's first 16 bits (RFC 1035 4.1.1); the rest goes out as the upstream sent it.
pub(crate) fn with_id(mut bytes: Vec<u8>, id: u16) -> Vec<u8> {
    if let Some(head) = bytes.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    bytes
}

/// The A/AAAA addresses of `answers` whose owner is on the CNAME chain from `qname`, each with
/// the smallest TTL on its path (its record's and every CNAME's before its owner).
pub(crate) fn chain_addresses(qname: &Name, answers: &[Record]) -> Vec<(IpAddr, u32)> {
    let chain = cname_chain(qname, answers);
    answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            let (_, path_ttl) = chain.iter().find(|(name, _)| *name == r.name)?;
            Some((addr, r.ttl.min(*path_ttl)))
        })
        .collect()
}

/// The names of the CNAME chain from `qname` (itself included), each with the smallest TTL of
/// the CNAME records that lead to it (`u32::MAX` for `qname`). Stops at a loop, at a name with
/// no CNAME, or after [`MAX_CNAME_CHAIN`] links.
fn cname_chain(qname: &Name, answers: &[Record]) -> Vec<(Name, u32)> {
    let mut chain = vec![(qname.clone(), u32::MAX)];
    let mut seen: HashSet<Name> = HashSet::from([qname.clone()]);
    while chain.len() <= MAX_CNAME_CHAIN {
        let Some((current, ttl)) = chain.last() else { break };
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.dns_class == DNSClass::IN && r.name == *current => {
                Some((target.0.clone(), r.ttl.min(*ttl)))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if seen.insert(target.clone()) => chain.push((target, ttl)),
            _ => break,
        }
    }
    chain
}
