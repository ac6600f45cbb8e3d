//! `local-cluster`: a real kube-apiserver and etcd on 127.0.0.1 for trying
//! Sluice's Kubernetes side on a machine without a cluster (no kubelet:
//! pods never run, so the operator runs here as a process). Writes an
//! admin kubeconfig, prints what to do next, and runs until Ctrl-C.
//!
//! Usage: cargo run -p testcluster --bin local-cluster [-- KUBECONFIG_PATH]
//! (default: target/local-cluster.kubeconfig under the workspace).

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/local-cluster.kubeconfig"));
    eprintln!("local-cluster: starting etcd and kube-apiserver (the first run builds them: several minutes)");
    let cluster = testcluster::Cluster::start().await?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(cluster.kubeconfig()?, &out)?;
    let out = out.canonicalize()?;
    println!("local-cluster: kube-apiserver at {}", cluster.url);
    println!("local-cluster: admin kubeconfig written to {}", out.display());
    println!("local-cluster: in another shell: export KUBECONFIG={}", out.display());
    println!("local-cluster: Ctrl-C stops it (and forgets everything in it)");
    tokio::signal::ctrl_c().await?;
    drop(cluster);
    let _ = std::fs::remove_file(&out);
    println!("local-cluster: stopped");
    Ok(())
}
