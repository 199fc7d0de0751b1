//! Policies held centrally in an OpenBao/Vault KV v2 mount: the HTTP client (`client`), the
//! layout of the documents (`layout`) and their signatures (`sign`), what the agent fetches
//! and caches (`sync`), and the agent's polling loop and status (`agent`).

pub mod agent;
pub mod cache;
pub mod client;
pub mod grants;
pub mod layout;
pub mod report;
pub mod sign;
pub mod sync;
