//! The ECDS directory Envoy watches: `DIR/<filter>.json` (the resource, `resource.rs`), its
//! history of applied versions (`history.rs`), and applying a version to it (`write.rs`).

pub mod history;
pub mod resource;
pub mod write;

pub use history::{rollback_target, Entry, History};
pub use resource::{ecds_resource, serving_vm_config, ModuleSettings};
pub use write::{apply, Applied, Meta};
