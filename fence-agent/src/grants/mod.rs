//! Just-in-time grants: time-bound access to one target of an identity's `grants:`, asked for
//! by the workload itself (attested by the kernel), approved automatically or by a person,
//! ended by the kernel on its own clock. The policy service owns the [`GrantBook`]; a grant in
//! force is compiled into the identity's maps like standing rules, tagged with its slot (see
//! `fence_common::grants`).

pub mod audit;
pub mod book;
pub mod reach;
pub mod teardown;

pub use book::{Grant, GrantBook, Phase, Requester, boot_id, boot_ns, new_id};
