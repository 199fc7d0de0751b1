//! The OCSF objects of a line, as fence writes them: only the attributes it fills, in the
//! order they are written.

use std::borrow::Cow;

use serde::Serialize;

use crate::events::{
    record::{Fence, Id},
    summary::SummaryFence,
};

/// One OCSF event line. Fields are written in this order; `unmapped` is last, so that the
/// event file's chain link goes into it.
#[derive(Debug, Serialize)]
pub struct Ocsf<'a> {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub activity_id: u32,
    pub activity_name: &'static str,
    pub type_uid: u32,
    pub type_name: String,
    pub severity_id: u8,
    pub severity: &'static str,
    /// Milliseconds since the epoch.
    pub time: i64,
    pub message: &'a str,
    pub status_id: u8,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<&'a str>,
    pub action_id: u8,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub metadata: Metadata<'a>,
    pub device: Device<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Query<'a>>,
    /// DNS Activity: the answer's addresses (audit mode, where the question went upstream).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Answer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File<'a>>,
    /// The process acted on (Process Activity): the program launched, the process traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding_info: Option<FindingInfo<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidences: Vec<Evidence<'a>>,
    pub unmapped: Unmapped<'a>,
}

#[derive(Debug, Serialize)]
pub struct Metadata<'a> {
    pub version: &'static str,
    pub product: Product<'a>,
    /// `event.id` of the ECS line.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub uid: &'a str,
    /// `event.sequence` of the ECS line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// `event.dataset`: `fence.enforcement`.
    pub log_name: &'a str,
    pub log_provider: &'static str,
    pub profiles: &'static [&'static str],
}

#[derive(Debug, Serialize)]
pub struct Product<'a> {
    pub name: &'static str,
    pub vendor_name: &'static str,
    pub version: &'a str,
}

/// The host (OCSF `device`).
#[derive(Debug, Serialize)]
pub struct Device<'a> {
    pub hostname: &'a str,
    pub name: &'a str,
    /// 0: Unknown (fence does not know whether it runs on a server, a desktop or a VM).
    pub type_id: u8,
}

#[derive(Debug, Serialize)]
pub struct Actor<'a> {
    pub process: Process<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User<'a>>,
}

#[derive(Debug, Default, Serialize)]
pub struct Process<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process: Option<Parent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Parent {
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct User<'a> {
    /// The effective user id (what permission checks use).
    pub uid: &'a str,
}

#[derive(Debug, Serialize)]
pub struct File<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub path: &'a str,
    /// 0 Unknown; 5 Local Socket for unix sockets.
    pub type_id: u8,
    /// The inode number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A unix socket's path (or `@abstract` name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionInfo<'a> {
    /// 2: Outbound (fence judges what fenced processes send).
    pub direction_id: u8,
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_num: Option<u16>,
    pub protocol_name: &'a str,
    /// 4 or 6, 0 where unknown.
    pub protocol_ver_id: u8,
}

#[derive(Debug, Serialize)]
pub struct Query<'a> {
    pub hostname: &'a str,
    #[serde(rename = "type")]
    pub query_type: &'a str,
}

/// One address of a DNS answer.
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    pub rdata: &'a str,
    /// `A` or `AAAA`.
    #[serde(rename = "type")]
    pub record_type: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FindingInfo<'a> {
    pub uid: Cow<'a, str>,
    pub title: &'a str,
    /// The operation, or `events-suppressed` / `events-dropped`.
    pub types: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analytic: Option<Analytic<'a>>,
}

/// The rule that decided.
#[derive(Debug, Serialize)]
pub struct Analytic<'a> {
    pub name: &'a str,
    /// 1: Rule.
    pub type_id: u8,
    #[serde(rename = "type")]
    pub analytic_type: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Evidence<'a> {
    pub actor: Actor<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File<'a>>,
}

/// fence's own fields, as the ECS line's `fence.*`, and ECS process fields OCSF has no place
/// for (the effective group, the real user and group).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Unmapped<'a> {
    Event {
        #[serde(flatten)]
        fence: &'a Fence,
        #[serde(skip_serializing_if = "ProcessIds::is_empty")]
        process: ProcessIds<'a>,
    },
    Summary(&'a SummaryFence),
}

#[derive(Debug, Serialize)]
pub struct ProcessIds<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_user: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_group: Option<&'a Id>,
}

impl ProcessIds<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.group.is_none() && self.real_user.is_none() && self.real_group.is_none()
    }
}
