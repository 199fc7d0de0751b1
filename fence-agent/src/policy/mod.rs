//! Policy: the documents operators write (`model`), reading them from files (`load`), checking
//! them as a whole (`validate`) into a [`PolicySet`] (`set`), and the errors that name file,
//! identity, field and reason (`error`). Nothing here touches the kernel; cgroup paths are resolved
//! through the [`CgroupResolver`] the caller passes in.

pub mod dns;
pub mod error;
pub mod glob;
pub mod load;
pub mod model;
pub mod net;
pub mod set;
pub mod validate;

#[cfg(test)]
mod tests;

pub use dns::{DnsAllowance, NameError, NamePattern};
pub use error::{PolicyError, PolicyErrorKind, PolicyErrors};
pub use load::{Format, SourceDocument, load_paths, parse_document, parse_document_all};
pub use model::{Approval, Mode};
pub use set::{
    BoundCgroup, EgressRule, ExecPolicy, ExecRule, GrantInForce, Grantable, Identity, PolicySet, PolicyVersion,
    SecretSource, SecretSpec, SelectorKind, UnixPolicy,
};
pub use validate::{CgroupResolver, MANAGED_DIR, ResolveError, is_dynamic_loader, validate};

/// The policy document schema this agent understands (`schema:` in every document).
pub const SCHEMA_VERSION: u32 = 1;
