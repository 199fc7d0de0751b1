//! fence's kernel programs. One module per hook family; every map is declared and documented
//! in `maps`; `identity` is the one lookup that answers "is this task fenced, and as whom".
//!
//! Return values of cgroup sock_addr / sock programs: `ALLOW` (1) lets the operation proceed,
//! `DENY` (0) makes the syscall fail with EPERM.
#![no_std]
#![no_main]
// For core::intrinsics::atomic_xadd: the BPF target has no atomic types, and a counter that
// several CPUs bump must not lose counts.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod dns;
mod escape;
mod events;
mod exec;
mod file;
mod grants;
mod identity;
mod kernel;
mod maps;
mod net;
mod route;
mod sysctl;
mod units;
mod unix;
mod verdicts;

/// The kernel refuses GPL-only helpers (and LSM programs) without a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program with a reachable panic path, so this is never reached
    // in a program that loads.
    loop {}
}
