//! `sluice-operator`: Sluice's control plane. It watches the resources,
//! compiles them with the same pure `snapshot::translate` the standalone
//! proxy uses, and writes what it concluded back as status conditions.
//!
//! ```text
//!   API server ──watch──> watch::Stores (one reflector per kind;
//!        ^                   Secrets and ConfigMaps by selector only)
//!        │                        │ changed (Notify)
//!        │                        v  debounce
//!        │              Inputs ─> translate ─> Translation ─> published (watch channel)
//!        │                                          │
//!        └──── keys::apply (issue / withdraw API  ───┘  only while lease::elect says
//!              key Secrets of approved apps), then       this replica leads
//!              status::write_all (SSA, one field
//!              manager, only what changed)
//! ```
//!
//! Every replica watches and compiles (a follower is ready to lead at
//! once); only the lease holder writes. The compiled translation is
//! published on a watch channel for what serves it to proxies.

pub mod admin;
pub mod keys;
pub mod lease;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use snapshot::Translation;
use tokio::sync::{Notify, watch as channel};

/// `say!("...", args)`: one log line on stderr, `sluice-operator: ...`,
/// ignoring write errors (a closed stderr must not stop the operator).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "sluice-operator: {}", format_args!($($arg)*));
    }};
}

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The leader-election lease.
    pub lease: lease::LeaseConfig,
    /// How long to wait after a change for more before compiling.
    pub debounce: Duration,
    /// How often to compile and reconcile statuses without a change (a
    /// status write that failed is retried then).
    pub resync: Duration,
}

/// What the operator publishes: the latest translation and whether this
/// replica leads.
#[derive(Debug, Clone)]
pub struct Handle {
    /// The latest translation (None until the caches have synced).
    pub translation: channel::Receiver<Option<Arc<Translation>>>,
    /// Whether this replica leads (writes status).
    pub leading: channel::Receiver<bool>,
    /// What it counts (served on the admin listener).
    pub metrics: Arc<admin::Metrics>,
}

/// Starts the operator on the current runtime; it runs until the runtime
/// stops.
pub fn start(client: kube::Client, config: Config) -> Handle {
    let changed = Arc::new(Notify::new());
    let stores = watch::Stores::start(&client, &changed);
    let leading = lease::elect(client.clone(), config.lease.clone());
    let (tx, rx) = channel::channel(None);
    let metrics = Arc::new(admin::Metrics::default());
    tokio::spawn(reconcile(client, stores, changed, leading.clone(), tx, config, metrics.clone()));
    Handle { translation: rx, leading, metrics }
}

/// The loop: on a change (or a resync, or on becoming leader), compile and,
/// when leading, write the statuses that differ.
async fn reconcile(
    client: kube::Client,
    stores: watch::Stores,
    changed: Arc<Notify>,
    mut leading: channel::Receiver<bool>,
    published: channel::Sender<Option<Arc<Translation>>>,
    config: Config,
    metrics: Arc<admin::Metrics>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let events = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "sluice-operator".into(),
            instance: Some(config.lease.identity.clone()),
        },
    );
    stores.ready().await;
    say!("caches synced");
    let mut last: Option<Arc<Translation>> = None;
    loop {
        let inputs = stores.inputs();
        let translation = Arc::new(snapshot::translate(&inputs));
        if last.as_ref().is_none_or(|l| l.snapshot.version != translation.snapshot.version) {
            say!(
                "compiled snapshot {} ({} routes, {} statuses)",
                translation.snapshot.version,
                translation.snapshot.routes.len(),
                translation.statuses.len()
            );
        }
        published.send_replace(Some(translation.clone()));
        metrics.compiles.fetch_add(1, Relaxed);
        metrics.routes.store(translation.snapshot.routes.len() as u64, Relaxed);
        metrics.rejected.store(translation.problems().count() as u64, Relaxed);
        metrics.ready.store(true, Relaxed);
        let lead = *leading.borrow_and_update();
        metrics.leading.store(lead, Relaxed);
        if lead {
            // Keys first: a subscription's status names its key Secret.
            let approved = |s: &crds::Subscription| {
                let object = snapshot::status::ObjectRef::new(
                    "Subscription",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                );
                translation.status(&object).is_some_and(|v| v.phase == Some(crds::ApprovalState::Approved))
            };
            let (actions, serving) = keys::plan(&stores.subscriptions(), approved, &stores.key_secrets());
            keys::apply(&client, &actions, &metrics).await;
            let written = status::write_all(&client, &stores, &translation, &serving, &metrics, &events).await;
            if written > 0 {
                say!("wrote {written} status(es) for snapshot {}", translation.snapshot.version);
            }
        }
        last = Some(translation);
        tokio::select! {
            _ = changed.notified() => {}
            _ = leading.changed() => {}
            _ = tokio::time::sleep(config.resync) => {}
        }
        // Let a burst of events (an apply of many objects) settle.
        tokio::time::sleep(config.debounce).await;
    }
}
