//! Sluice's data plane: the API waterfall for every request.
//!
//! ```text
//!  clients ──TCP/TLS──> server (workers) ──> pipeline::handle
//!                                                              │
//!        Gateway { current: ArcSwap<Compiled>, metrics, upstreams, limiters }
//!                     ^
//!   standalone (folder -> translate)   or   snapshot client (operator, later)
//! ```
//!
//! A snapshot is compiled once into a router, per-route stages and upstream
//! sets, then swapped in atomically; each request loads it once and
//! finishes on it, whatever is installed meanwhile. The proxy never depends
//! on a Kubernetes client.

pub mod admin;
pub mod balance;
pub mod body;
pub mod cache;
pub mod calllog;
pub mod conn;
pub mod errors;
pub mod exchange;
pub mod h1;
pub mod ingress;
pub mod jwks;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod record;
pub mod router;
pub mod server;
pub mod stages;
pub mod standalone;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use server::{Running, ServerConfig, start};
pub use state::{Gateway, Limits};
