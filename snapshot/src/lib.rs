//! Sluice's compiler: every watched object in, one immutable [`Snapshot`]
//! and a status per object out.
//!
//! ```text
//!   Tenants, ApiRoutes, Subscriptions, AiProviders,
//!   Ingresses, Services, EndpointSlices, Secrets, ConfigMaps
//!                       │  Inputs (any order)
//!                       v
//!                  translate()            pure: no I/O, no clock, no randomness
//!                       │
//!          ┌────────────┴────────────┐
//!          v                         v
//!      Snapshot (versioned)     statuses (conditions per object)
//!      -> proxies               -> operator writes them back
//! ```
//!
//! Both the operator and the proxy's standalone mode call [`translate`];
//! neither this crate nor its callers' hot paths do I/O through it.

mod inputs;
mod model;
pub mod status;
mod translate;

pub use inputs::{AgeSource, Inputs, LoadError};
pub use model::*;
pub use translate::{Translation, api_keys, content_version, host_covers, normalize_host, translate};
