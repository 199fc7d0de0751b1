//! The agent's compliance report, published to the vault as `status/<host>/report` for
//! `fence-agent report --hosts`: built by the same code as `fence-agent report` on the host
//! (see [`crate::report`]), from the policy service's answers and the agent's own logs. Written
//! after the first poll that reaches the vault, whenever the policy in force changes, and at
//! least every [`REPORT_EVERY`]; best effort (a failure is logged once and tried again after
//! [`RETRY_AFTER`]).

use std::{sync::Arc, time::Duration, time::Instant};

use super::{client::VaultClient, layout::report_path};
use crate::{
    config::Config,
    control::{
        Peer, Request,
        protocol::{IdentitiesReply, StatusReply, decode},
    },
    report::{build, gather},
    service::ServiceHandle,
};

/// The longest a published report goes without being rewritten.
pub const REPORT_EVERY: Duration = Duration::from_secs(3600);
/// After a failed publish (the vault refuses the path, the report is too big...), the next try
/// waits this long: building the report reads every log file, and the polls go on meanwhile.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What the agent needs to publish its report, and what it published last.
pub struct Publisher {
    config: Arc<Config>,
    /// When, and for which policy sequence.
    last: Option<(Instant, Option<u64>)>,
    /// A failure was logged (logged once until a write succeeds).
    warned: bool,
    /// No try before this (after a failure).
    not_before: Option<Instant>,
}

impl Publisher {
    pub fn new(config: Config) -> Publisher {
        Publisher { config: Arc::new(config), last: None, warned: false, not_before: None }
    }

    /// Publishes the report if it is due.
    pub async fn poll(&mut self, client: &VaultClient, service: &ServiceHandle) {
        if self.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(status) = ask::<StatusReply>(service, Request::Status).await else { return };
        if let Some((at, seq)) = self.last
            && seq == status.sequence
            && at.elapsed() < REPORT_EVERY
        {
            return;
        }
        let Some(identities) = ask::<IdentitiesReply>(service, Request::Identities).await else { return };
        let Some(host) = status.vault.as_ref().map(|v| v.hostname.clone()) else { return };
        let Ok(path) = report_path(&host) else { return };
        let sequence = status.sequence;
        let config = self.config.clone();
        // Reading the logs is file work: off the async threads.
        let built = tokio::task::spawn_blocking(move || {
            gather::local(&config, host, status, identities.identities, None).map(build)
        })
        .await;
        let written = match built {
            Ok(Ok(report)) => match serde_json::to_value(&report) {
                Ok(data) => client.kv_write(&path, &data, None).await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(()) => {
                self.warned = false;
                self.not_before = None;
                self.last = Some((Instant::now(), sequence));
            }
            Err(e) => {
                self.not_before = Some(Instant::now() + RETRY_AFTER);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "publishing this host's compliance report to the vault failed (report --hosts shows it as missing); trying again in 10 minutes");
                }
            }
        }
    }
}

/// The policy service's answer to `request`, as the agent itself asks it.
async fn ask<T: serde::de::DeserializeOwned>(service: &ServiceHandle, request: Request) -> Option<T> {
    let peer = Peer { pid: std::process::id(), uid: 0, gid: 0, cgroup: None, exe: None };
    let line = service.control(request, peer).await;
    decode(String::from_utf8_lossy(&line).trim()).ok()
}
