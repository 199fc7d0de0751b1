//! One file per subcommand.

pub mod console;
pub mod dns;
pub mod doctor;
pub mod exec;
pub mod grant;
pub mod identities;
pub mod logs;
pub mod policy;
pub mod run;
pub mod status;
pub mod uninstall;
