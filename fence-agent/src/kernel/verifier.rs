//! What the kernel's verifier said about a program: its refusal in one line, and how much it
//! verified for a program it accepted (logged; the bulk of an agent start on BPF LSM kernels
//! under emulation).

use aya::programs::{Lsm, ProgramError};

/// The kernel's answer, in one line: the verifier's complaint (the lines before its closing
/// statistics), not the whole log, which goes to the debug log.
pub(super) fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "BPF_PROG_LOAD refused");
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time"))
                .collect();
            match lines.len() {
                0 => format!("BPF_PROG_LOAD: {io_error} (empty verifier log)"),
                n => format!("BPF_PROG_LOAD: {io_error}; verifier: {}", lines[n.saturating_sub(2)..].join(" | ")),
            }
        }
        other => other.to_string(),
    }
}

/// Logs a BPF LSM program's load time and the instructions the kernel verified (the bulk of
/// the agent's start-up on BPF LSM kernels under emulation).
pub(super) fn log_lsm_loaded(program: &str, p: &Lsm, started: std::time::Instant) {
    let verified = p.info().ok().and_then(|i| i.verified_instruction_count());
    tracing::debug!(program, ms = started.elapsed().as_millis() as u64, verified, "program loaded");
}
