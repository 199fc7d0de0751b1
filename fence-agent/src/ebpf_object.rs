//! The eBPF object built by build.rs, embedded in the binary.

/// The object's bytes (empty only in an `AYA_BUILD_SKIP=1` tooling build, which the enforcer
/// refuses to run).
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fence"))
}
