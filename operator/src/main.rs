//! `sluice-operator`: see the crate docs. Flags, then the operator until
//! SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::Context as _;
use sluice_operator::{Config, lease::LeaseConfig, say};

const HELP: &str = "\
sluice-operator: watches Sluice's resources, compiles them and writes their status.

Usage: sluice-operator [flags]

  --lease-namespace NS   namespace of the leader-election Lease
                         (default: $POD_NAMESPACE, else sluice-system)
  --lease-name NAME      the Lease's name (default: sluice-operator)
  --identity ID          this replica's name in the Lease (default: $POD_NAME, else the host name)
  --lease-duration SECS  how long a lease holds unrenewed (default: 15)
  --debounce-ms MS       wait after a change for more before compiling (default: 100)
  --resync-secs SECS     compile and reconcile at least this often (default: 30)
  --admin ADDR           /healthz, /readyz and /metrics (default: 127.0.0.1:9902;
                         0.0.0.0:9902 in a pod, for the kubelet and Prometheus)
  -h, --help             this text

The API server and credentials come from $KUBECONFIG (or ~/.kube/config), or
from the pod's ServiceAccount when run in a cluster.";

fn main() -> anyhow::Result<()> {
    let (config, admin) = parse(std::env::args().skip(1))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // NB: one crypto provider for rustls, installed before any client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.context("connecting to the API server")?;
        say!("starting as {} (lease {}/{})", config.lease.identity, config.lease.namespace, config.lease.name);
        let listener = tokio::net::TcpListener::bind(&admin).await.with_context(|| format!("--admin {admin}"))?;
        say!("admin on {}", listener.local_addr().context("the admin address")?);
        let handle = sluice_operator::start(client.clone(), config.clone());
        tokio::spawn(sluice_operator::admin::serve(listener, handle.metrics.clone()));
        shutdown().await;
        match sluice_operator::lease::release(client, &config.lease).await {
            Ok(true) => say!("stopping: released lease {}/{}", config.lease.namespace, config.lease.name),
            Ok(false) => say!("stopping"),
            Err(error) => say!("stopping: could not release the lease ({error}); it expires by itself"),
        }
        anyhow::Ok(())
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<(Config, String)> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut lease = LeaseConfig {
        namespace: env("POD_NAMESPACE").unwrap_or_else(|| "sluice-system".into()),
        name: "sluice-operator".into(),
        identity: env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("sluice-operator-{}", std::process::id())),
        duration: Duration::from_secs(15),
    };
    let mut debounce = Duration::from_millis(100);
    let mut resync = Duration::from_secs(30);
    let mut admin = "127.0.0.1:9902".to_owned();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        let number =
            |text: String| text.parse::<u64>().with_context(|| format!("{flag}: {text:?} is not a whole number"));
        match flag.as_str() {
            "--lease-namespace" => lease.namespace = value()?,
            "--lease-name" => lease.name = value()?,
            "--identity" => lease.identity = value()?,
            "--lease-duration" => lease.duration = Duration::from_secs(number(value()?)?.max(1)),
            "--debounce-ms" => debounce = Duration::from_millis(number(value()?)?),
            "--resync-secs" => resync = Duration::from_secs(number(value()?)?.max(1)),
            "--admin" => admin = value()?,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other:?} (see --help)"),
        }
    }
    Ok((Config { lease, debounce, resync }, admin))
}
