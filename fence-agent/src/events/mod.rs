//! The event pipeline: kernel records from the ring buffer are decoded (`decode`), enriched
//! with what only user space knows (identity name, policy version, executable, cgroup path)
//! into an ECS-shaped record (`build`, `record`), and written as one JSON line to each sink
//! (`sink`) by the event writer's thread (`reader`), numbered (`sequence`). `fence-agent logs` reads the lines back
//! through the same record types.

pub mod build;
pub mod decode;
pub mod directory;
pub mod ocsf;
pub mod reader;
pub mod record;
pub mod sequence;
pub mod sink;
pub mod summary;

pub use directory::{Directory, SharedDirectory};
pub use reader::{EventReader, EventThread};
pub use sink::Sinks;
