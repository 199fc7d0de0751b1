//! The policy service: the one owner of the policy in force. Every change (the local files at
//! start and on SIGHUP, a verified set from the vault, files the policy names changing on disk,
//! an identity expiring) arrives as a typed [`Change`], and is handled one at a time, in order:
//! validated, resolved on this host, compiled, applied to the kernel and to the user-space
//! views (the event directory, the fanotify fallback, the identity numbering) together or not
//! at all, audited, reflected in status and metrics, and answered. Nothing else writes policy
//! state, status or policy metrics.
//!
//! It runs on a thread of its own ("fence-policy"): applies make blocking system calls (map
//! updates, file resolution, hashing, an RCU grace period), and a thread keeps them off the
//! async runtime. Others talk to it through a [`ServiceHandle`]: the vault task, the SIGHUP
//! handler, the inotify watcher and the control socket.

pub mod apply;
pub mod dns;
pub mod dns_peer;
mod grant_end;
#[cfg(test)]
mod grant_tests;
pub mod grant_vault;
pub mod grants;
pub mod learned;
mod messages;
mod queries;
#[cfg(test)]
mod secret_tests;
mod secrets;
#[cfg(test)]
mod tests;
mod vault;

use std::{path::PathBuf, sync::mpsc, thread, time::Duration};

use jiff::Timestamp;

pub use apply::load_policy;
pub use messages::{Change, Message, Outcome, PollOutcome, PollReport};
pub use secrets::Refusal;
pub use vault::{VaultInForce, VaultState};

use crate::{
    audit::AuditLog,
    cgroup::Cgroups,
    compile::IdAllocator,
    control::{Peer, Request, protocol::Handled},
    events::SharedDirectory,
    fences::files::fanotify::FileFence,
    hold::Holder,
    kernel::{Generations, PolicyMaps, loader::Attacher},
    metrics::Metrics,
    protect::HostProtection,
    resolve::Resolver,
    vault::agent::SyncStatus,
    watch::Watcher,
};

/// What the service needs from the host, fixed for its life.
pub struct Deps {
    pub cgroups: Cgroups,
    /// The configured protected set (the vault's assignment may add to it).
    pub host: HostProtection,
    /// `--policy`: files and directories.
    pub policy_paths: Vec<PathBuf>,
    /// For the audit log.
    pub hostname: String,
    /// Where the identity numbering is kept across restarts (persistence on).
    pub ids_path: Option<PathBuf>,
    /// The broker's `files_dir` (a broker with a vault runs): each identity with secrets is
    /// excepted from its protection for its own subdirectory.
    pub secret_files: Option<PathBuf>,
    /// The fences and their mechanisms as loaded at start (`status`).
    pub fences: Vec<crate::control::protocol::FenceState>,
}

/// The views of the policy outside the kernel, kept in step with it.
pub struct Views {
    pub directory: SharedDirectory,
    /// The fanotify fallback of the credential-files fence, where it is the mechanism.
    pub files: Option<FileFence>,
    pub watcher: Option<Watcher>,
    pub audit: AuditLog,
    pub metrics: Metrics,
}

pub struct PolicyService<M> {
    kernel: Generations<M>,
    /// Attaches the cgroup programs where the policy fences (none in unit tests without one).
    attacher: Option<Box<dyn Attacher>>,
    deps: Deps,
    views: Views,
    ids: IdAllocator,
    held: Holder,
    resolver: Resolver,
    live: Option<apply::Live>,
    vault: Option<VaultState>,
    handled: Handled,
    /// Egress by name, when the dns fence is loaded and `[dns] enabled`.
    dns: Option<dns::DnsState>,
    /// Just-in-time grants.
    grants: grants::Grants,
    /// Where the broker's view of the policy is published (a broker runs).
    broker_view: Option<tokio::sync::watch::Sender<crate::broker::BrokerView>>,
    /// The status line last sent to systemd.
    status_line: String,
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    pub fn new(
        kernel: Generations<M>,
        attacher: Option<Box<dyn Attacher>>,
        deps: Deps,
        views: Views,
        vault: Option<VaultState>,
    ) -> PolicyService<M> {
        let ids = deps.ids_path.as_deref().map(IdAllocator::load).unwrap_or_default();
        PolicyService {
            kernel,
            attacher,
            deps,
            views,
            ids,
            held: Holder::for_agent(),
            resolver: Resolver::default(),
            live: None,
            vault,
            handled: Handled::default(),
            dns: None,
            grants: grants::Grants::default(),
            broker_view: None,
            status_line: String::new(),
        }
    }

    /// Publishes the broker's view of the policy to `tx` from now on.
    pub fn with_broker(&mut self, tx: tokio::sync::watch::Sender<crate::broker::BrokerView>) {
        self.broker_view = Some(tx);
        self.publish_broker_view();
    }

    /// Egress by name: the service keeps each identity's resolver and learned addresses.
    pub fn with_dns(&mut self, dns: dns::DnsState) {
        self.dns = Some(dns);
    }

    /// Handles one message; `false` when the service should stop.
    pub fn handle(&mut self, message: Message) -> bool {
        match message {
            Message::Change { change, reply } => {
                let outcome = self.change(change);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
                // A grant whose target (or identity) the new policy dropped ends now.
                self.grants_due();
            }
            Message::Control { request, peer, reply } => {
                let _ = reply.send(self.control(request, peer));
            }
            Message::VaultPolled { report, reply } => {
                let status = self.vault_polled(report);
                let _ = reply.send(status);
            }
            Message::VaultStopped { why } => self.vault_stopped(&why),
            Message::DnsLearn { answer, reply } => {
                let result = match &mut self.dns {
                    Some(d) => d.learn(answer),
                    None => Err("egress by name is off".to_owned()),
                };
                let _ = reply.send(result);
            }
            Message::GrantWork { reply } => {
                let _ = reply.send(self.grant_work());
            }
            Message::GrantsPublished { ids } => self.grants_published(&ids),
            Message::GrantDecided { id, version, decision } => self.grant_decided(&id, version, decision),
            Message::SecretTicket { name, peer, reply } => {
                let _ = reply.send(self.secret_ticket(&name, &peer));
            }
            Message::SecretAudit { record } => self.audit_secret(&record),
            Message::Stop => return false,
        }
        self.publish_broker_view();
        self.publish_status();
        true
    }

    /// Tells systemd the status line when it changed (`systemctl status`; nothing without
    /// NOTIFY_SOCKET).
    fn publish_status(&mut self) {
        let line = self.status_line();
        if line != self.status_line {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            self.status_line = line;
        }
    }

    /// Runs the service on its own thread, taking messages from `inbox`, until
    /// [`ServiceHandle::stop`] or every handle is dropped. Identities expire on time while it
    /// waits.
    pub fn spawn(mut self, inbox: Inbox) -> std::io::Result<thread::JoinHandle<()>> {
        let rx = inbox.0;
        thread::Builder::new().name("fence-policy".into()).spawn(move || {
            self.publish_status();
            let mut swept = std::time::Instant::now();
            loop {
                let due = self.until_next_expiry().min(self.until_next_grant().unwrap_or(IDLE_WAIT));
                let sweep_in = DNS_SWEEP.saturating_sub(swept.elapsed());
                let wait = if self.dns.is_some() { due.min(sweep_in) } else { due };
                let wait = self.views.audit.until_checkpoint().map_or(wait, |c| wait.min(c));
                match rx.recv_timeout(wait) {
                    Ok(message) => {
                        if !self.handle(message) {
                            return;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                // Checked after every message too: a steady stream of them (DNS answers) must
                // not hold back an identity's expiry or the sweep.
                if let Some(d) = &mut self.dns
                    && swept.elapsed() >= DNS_SWEEP
                {
                    d.sweep();
                    swept = std::time::Instant::now();
                }
                if self.next_expiry().is_some() && self.until_next_expiry().is_zero() {
                    self.change(Change::Expiry);
                    self.publish_status();
                    // Grants of an identity that just expired end with it.
                    self.grants_due();
                }
                if self.until_next_grant().is_some_and(|d| d.is_zero()) {
                    self.grants_due();
                    self.publish_broker_view();
                }
                self.views.audit.checkpoint_if_due();
            }
        })
    }

    fn until_next_expiry(&self) -> Duration {
        match self.next_expiry() {
            Some(at) => Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO),
            None => IDLE_WAIT,
        }
    }

    /// What `status` shows about the vault.
    pub fn vault_status(&self) -> Option<&SyncStatus> {
        self.vault.as_ref().map(|v| &v.status)
    }
}

/// The service's messages, until it runs.
pub struct Inbox(mpsc::Receiver<Message>);

/// A handle and the inbox it sends to: made before the service, so that what reports to it
/// (the inotify watcher) can be built first.
pub fn channel() -> (ServiceHandle, Inbox) {
    let (tx, rx) = mpsc::channel();
    (ServiceHandle { tx }, Inbox(rx))
}

/// How long the service sleeps when no identity is due to expire.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// How often expired learned addresses are swept from the kernel's maps.
const DNS_SWEEP: Duration = Duration::from_secs(5);

/// A cheap handle on the running service.
#[derive(Clone)]
pub struct ServiceHandle {
    tx: mpsc::Sender<Message>,
}

impl ServiceHandle {
    /// Submits a change and waits for its outcome.
    pub async fn change(&self, change: Change) -> Outcome {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Change { change, reply: Some(reply) }).is_err() {
            return Outcome::Refused("the policy service has stopped".into());
        }
        answer.await.unwrap_or_else(|_| Outcome::Refused("the policy service has stopped".into()))
    }

    /// Submits a change without waiting (SIGHUP, inotify: the service logs the outcome).
    pub fn notify(&self, change: Change) {
        let _ = self.tx.send(Message::Change { change, reply: None });
    }

    /// A control-socket request: the encoded answer line.
    pub async fn control(&self, request: Request, peer: Peer) -> Vec<u8> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || crate::control::protocol::encode::<()>(&Err("the agent is shutting down".into()));
        if self.tx.send(Message::Control { request, peer, reply }).is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }

    /// Reports a vault poll; answers the status to publish to the vault.
    pub async fn vault_polled(&self, report: PollReport) -> Option<SyncStatus> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Message::VaultPolled { report, reply }).ok()?;
        answer.await.ok().flatten()
    }

    /// An allowed DNS answer: its addresses go into the kernel; answers once they are there.
    pub async fn dns_learn(&self, answer: dns::LearnedAnswer) -> Result<(), String> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.tx.send(Message::DnsLearn { answer, reply }).map_err(|_| "the policy service has stopped".to_owned())?;
        result.await.unwrap_or_else(|_| Err("the policy service has stopped".to_owned()))
    }

    /// Grant work for the vault task (requests to publish, decisions to look for).
    pub async fn grant_work(&self) -> Option<grant_vault::GrantWork> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Message::GrantWork { reply }).ok()?;
        answer.await.ok()
    }

    /// Requests now in the vault.
    pub fn grants_published(&self, ids: Vec<String>) {
        let _ = self.tx.send(Message::GrantsPublished { ids });
    }

    /// A console's decision, checked by the vault task.
    pub fn grant_decided(&self, id: String, version: u64, decision: Result<grant_vault::Signed, String>) {
        let _ = self.tx.send(Message::GrantDecided { id, version, decision });
    }

    /// The vault task has ended (a bug): say so in status and metrics.
    pub fn vault_stopped(&self, why: String) {
        let _ = self.tx.send(Message::VaultStopped { why });
    }

    /// Whether `peer` may have secret `name`: what the broker fetches, or why not.
    pub async fn secret_ticket(&self, name: String, peer: Peer) -> Result<crate::broker::Ticket, secrets::Refusal> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || secrets::Refusal {
            identity: None,
            kind: "",
            why: "the agent is shutting down".into(),
            needs_grant: false,
            identity_id: 0,
            policy_version: 0,
        };
        if self.tx.send(Message::SecretTicket { name, peer, reply }).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// A broker line for the audit log.
    pub fn audit_secret(&self, record: crate::broker::audit::SecretRecord) {
        let _ = self.tx.send(Message::SecretAudit { record: Box::new(record) });
    }

    /// Asks the service to stop after the messages already sent.
    pub fn stop(&self) {
        let _ = self.tx.send(Message::Stop);
    }
}
