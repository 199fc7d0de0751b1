//! Rebuild when the bpf-linker binary changes: building this crate depends on it, and cargo
//! cannot express a dependency on a binary.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup`")
        }
    }
}
