//! What every exec test checks of a denial and its event (split from kernel_fences.rs).

use std::path::Path;

use serde_json::Value;

use crate::{
    agent::Agent,
    env::TestCgroup,
    helper::{self, Outcome},
    kernel_fences::{event_of, s},
};

#[track_caller]
pub(crate) fn assert_exec_denied(o: &Outcome, mech: &str, what: &str) {
    if mech.starts_with("lsm/") { o.assert_eperm(what) } else { o.assert_killed(what) }
}

pub(crate) fn exec(cg: &TestCgroup, program: &Path) -> Outcome {
    helper::run(Some(cg), &["exec", &s(program), "helper", "noop"])
}

#[track_caller]
pub(crate) fn assert_exec_event(agent: &Agent, o: &Outcome, mech: &str, reason: &str, file_name: &str) -> Value {
    let e = event_of(agent, o, "exec");
    let lsm = mech.starts_with("lsm/");
    assert_eq!(e["fence"]["verdict"], if lsm { "denied" } else { "killed" }, "{e:#}");
    assert_eq!(
        e["fence"]["mechanism"],
        if lsm { "lsm/bprm_check_security" } else { "tp_btf/sched_process_exec+sigkill" }
    );
    assert_eq!(e["fence"]["reason"], reason, "{e:#}");
    assert_eq!(e["fence"]["identity"], "test-bot");
    assert_eq!(e["event"]["category"][0], "process");
    let target = e["fence"]["target"]["path"].as_str().unwrap_or_default();
    assert!(target.ends_with(file_name), "target {target:?} should name {file_name}: {e:#}");
    assert!(e["process"]["executable"].as_str().is_some_and(|x| !x.is_empty()), "actor executable: {e:#}");
    // The actor is the caller (the helper that called execve), as the README says: with BPF
    // LSM, and with the fallback where the kernel has sched_prepare_exec (6.10 and later).
    if lsm || kernel_keeps_exec_caller() {
        assert_eq!(e["process"]["name"], "fence-tests", "the caller's name: {e:#}");
        let exe = e["process"]["executable"].as_str().unwrap_or_default();
        assert!(exe.ends_with("/fence-tests"), "the caller's executable, not {file_name}: {e:#}");
    }
    e
}

/// Whether this kernel has the tracepoint the exec fallback keeps the caller with.
fn kernel_keeps_exec_caller() -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux")
        .is_ok_and(|btf| btf.windows(28).any(|w| w == b"btf_trace_sched_prepare_exec"))
}
