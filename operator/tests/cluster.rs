//! The operator against a real kube-apiserver (tests/cluster): statuses
//! written once with `observedGeneration`, a bad object reported while the
//! rest stays accepted, and leader election between two replicas (only the
//! leader writes; the follower takes over when the leader dies).
//!
//! The operator runs as its own process (`sluice-operator`), with a
//! kubeconfig for the cluster, as it would in a pod.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use testcluster::{Cluster, apply, eventually};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `sluice-operator` process, killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(cluster: &Cluster, identity: &str) -> Operator {
        let kubeconfig = cluster.kubeconfig().expect("kubeconfig");
        let log = kubeconfig.with_file_name(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
            .args(["--identity", identity, "--lease-namespace", "default", "--lease-duration", "3"])
            .args(["--debounce-ms", "50", "--resync-secs", "5", "--admin", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("sluice-operator starts");
        Operator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` from its admin listener (the address it logs): status
    /// line and body.
    async fn admin(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let addr = eventually("the admin address in the log", Duration::from_secs(20), || async {
            let log = self.log();
            log.lines().find_map(|l| l.strip_prefix("sluice-operator: admin on ").map(str::to_owned))
        })
        .await;
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to admin");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator in this process (to read what it compiles), leading at once.
fn in_process(client: &kube::Client) -> sluice_operator::Handle {
    let config = sluice_operator::Config {
        lease: sluice_operator::lease::LeaseConfig {
            namespace: "default".into(),
            name: "sluice-operator".into(),
            identity: "in-process".into(),
            duration: Duration::from_secs(3),
        },
        debounce: Duration::from_millis(50),
        resync: Duration::from_secs(5),
    };
    sluice_operator::start(client.clone(), config)
}

async fn cluster_with(files: &[&str]) -> Cluster {
    let cluster = Cluster::start().await.expect("a control plane");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(repo().join("charts/sluice/crds")).expect("crds").map(|e| e.expect("entry").path()).collect();
    paths.extend(files.iter().map(|f| repo().join(f)));
    cluster.apply_files(&paths).await.expect("CRDs and examples apply");
    cluster
}

/// The object as the API server has it now.
async fn get(client: &kube::Client, kind: &str, namespace: Option<&str>, name: &str) -> Value {
    let mut probe = json!({ "apiVersion": crds::API_VERSION, "kind": kind, "metadata": { "name": name } });
    if let Some(namespace) = namespace {
        probe["metadata"]["namespace"] = json!(namespace);
    }
    let api: Api<DynamicObject> = testcluster::dynamic_api(client, &probe).await.expect("served kind");
    serde_json::to_value(api.get(name).await.expect("object exists")).expect("JSON")
}

/// The condition `kind` of an object, once it is for the object's current
/// generation.
fn current_condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    let generation = object["metadata"]["generation"].as_i64()?;
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["observedGeneration"].as_i64() == Some(generation))
}

async fn condition_of(client: &kube::Client, kind: &str, ns: Option<&str>, name: &str, cond: &str) -> Value {
    let what = format!("{kind} {name}: {cond} for its generation");
    eventually(&what, Duration::from_secs(60), || async {
        let object = get(client, kind, ns, name).await;
        current_condition(&object, cond).cloned()
    })
    .await
}

#[tokio::test]
async fn statuses_are_written_once_for_the_current_generation() {
    let cluster = cluster_with(&["examples/quickstart/tenants.yaml", "examples/quickstart/routes.yaml"]).await;
    let client = cluster.client().await.expect("client");
    let _operator = Operator::start(&cluster, "op-a");

    let accepted = condition_of(&client, "ApiRoute", Some("shop"), "orders", "Accepted").await;
    assert_eq!(accepted["status"], "True", "{accepted}");
    assert_eq!(accepted["reason"], "Accepted");
    let tenant = condition_of(&client, "Tenant", None, "shop", "Accepted").await;
    assert_eq!(tenant["status"], "True", "{tenant}");
    condition_of(&client, "Subscription", Some("partner"), "web-orders", "Accepted").await;
    let subscription = get(&client, "Subscription", Some("partner"), "web-orders").await;
    assert_eq!(subscription["status"]["phase"], "Pending", "{subscription:#}");
    for route in ["hello", "users-mock", "health", "files", "users-v0"] {
        let accepted = condition_of(&client, "ApiRoute", Some("default"), route, "Accepted").await;
        assert_eq!(accepted["status"], "True", "{route}: {accepted}");
    }
    // Written by the one field manager, through the status subresource.
    let orders = get(&client, "ApiRoute", Some("shop"), "orders").await;
    let managers: Vec<&Value> = orders["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter(|m| m["subresource"] == "status")
        .collect();
    assert_eq!(managers.len(), 1, "{managers:#?}");
    assert_eq!(managers[0]["manager"], sluice_operator::status::FIELD_MANAGER);
    assert_eq!(managers[0]["operation"], "Apply");

    // Another object changes: the statuses already right are not rewritten.
    let before = orders["metadata"]["resourceVersion"].clone();
    let extra = json!({
        "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
        "metadata": { "name": "extra", "namespace": "default" },
        "spec": { "matches": [{ "path": { "type": "PathPrefix", "value": "/extra" } }],
                  "backend": { "directResponse": { "status": 200, "body": "extra" } } }
    });
    apply(&client, &extra).await.expect("a new route");
    condition_of(&client, "ApiRoute", Some("default"), "extra", "Accepted").await;
    // A resync passes too (5 s in this test): nothing to write either.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = get(&client, "ApiRoute", Some("shop"), "orders").await;
    assert_eq!(after["metadata"]["resourceVersion"], before, "an unchanged status is not written again");

    // A spec change is a new generation: the conditions follow it, and the
    // Accepted condition, still True, keeps its transition time.
    let mut changed = extra.clone();
    changed["spec"]["backend"]["directResponse"]["body"] = json!("changed");
    apply(&client, &changed).await.expect("an update");
    let first = condition_of(&client, "ApiRoute", Some("default"), "extra", "Accepted").await;
    let object = get(&client, "ApiRoute", Some("default"), "extra").await;
    assert_eq!(object["metadata"]["generation"], 2);
    assert_eq!(first["observedGeneration"], 2);
}

#[tokio::test]
async fn a_bad_route_is_reported_and_the_others_stay_accepted() {
    let cluster = cluster_with(&["examples/quickstart/tenants.yaml"]).await;
    let client = cluster.client().await.expect("client");
    let _operator = Operator::start(&cluster, "op-a");
    condition_of(&client, "ApiRoute", Some("shop"), "orders", "Accepted").await;

    // A Service that does not exist.
    let missing = json!({
        "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
        "metadata": { "name": "missing", "namespace": "shop" },
        "spec": { "hosts": ["api.localhost"], "matches": [{ "path": { "type": "PathPrefix", "value": "/missing" } }],
                  "backend": { "services": [{ "name": "nowhere", "port": 80 }] } }
    });
    apply(&client, &missing).await.expect("passes CEL");
    let refs = condition_of(&client, "ApiRoute", Some("shop"), "missing", "ResolvedRefs").await;
    assert_eq!(refs["status"], "False", "{refs}");
    assert_eq!(refs["reason"], "BackendNotFound", "{refs}");
    // ... and says so in an event (kubectl describe).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "shop");
    let event = eventually("a Warning event on the route", Duration::from_secs(20), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("missing"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("BackendNotFound"));
    assert!(event.note.as_deref().unwrap_or_default().contains("nowhere"), "{event:?}");

    // A host that belongs to another tenant.
    let foreign = json!({
        "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
        "metadata": { "name": "foreign", "namespace": "partner" },
        "spec": { "hosts": ["api.localhost"], "backend": { "directResponse": { "status": 200 } } }
    });
    apply(&client, &foreign).await.expect("passes CEL");
    let accepted = condition_of(&client, "ApiRoute", Some("partner"), "foreign", "Accepted").await;
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert_eq!(accepted["reason"], "NotAllowedHost", "{accepted}");

    // The same host and path as an older route: the older one keeps it.
    let copy = json!({
        "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
        "metadata": { "name": "orders-copy", "namespace": "shop" },
        "spec": { "hosts": ["api.localhost"], "matches": [{ "path": { "type": "PathPrefix", "value": "/orders" } }],
                  "backend": { "directResponse": { "status": 200 } } }
    });
    apply(&client, &copy).await.expect("passes CEL");
    let conflicted = condition_of(&client, "ApiRoute", Some("shop"), "orders-copy", "Accepted").await;
    assert_eq!(conflicted["status"], "False", "{conflicted}");
    assert_eq!(conflicted["reason"], "Conflicted", "{conflicted}");
    assert!(conflicted["message"].as_str().unwrap_or_default().contains("ApiRoute shop/orders"), "{conflicted}");

    let orders = condition_of(&client, "ApiRoute", Some("shop"), "orders", "Accepted").await;
    assert_eq!(orders["status"], "True", "the good route is still accepted: {orders}");
}

#[tokio::test]
async fn only_the_leader_writes_and_the_follower_takes_over() {
    let cluster = cluster_with(&["examples/quickstart/tenants.yaml"]).await;
    let client = cluster.client().await.expect("client");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        let lease = leases.get_opt("sluice-operator").await.ok().flatten()?;
        lease.spec?.holder_identity
    };

    let mut a = Operator::start(&cluster, "op-a");
    let first = eventually("a lease holder", Duration::from_secs(20), holder).await;
    assert_eq!(first, "op-a");
    condition_of(&client, "ApiRoute", Some("shop"), "orders", "Accepted").await;
    let b = Operator::start(&cluster, "op-b");
    eventually("op-b to sync its caches", Duration::from_secs(20), || async {
        b.log().contains("caches synced").then_some(())
    })
    .await;

    let route = |name: &str| {
        json!({
            "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "hosts": ["api.localhost"],
                      "matches": [{ "path": { "type": "PathPrefix", "value": format!("/{name}") } }],
                      "backend": { "directResponse": { "status": 200 } } }
        })
    };
    apply(&client, &route("while-a-leads")).await.expect("route");
    condition_of(&client, "ApiRoute", Some("shop"), "while-a-leads", "Accepted").await;
    assert_eq!(holder().await.as_deref(), Some("op-a"));
    assert!(a.log().contains("wrote "), "the leader wrote: {}", a.log());
    assert!(!b.log().contains("wrote "), "the follower wrote nothing: {}", b.log());
    // Both are ready; each says on /metrics whether it leads.
    for (operator, leading) in [(&a, 1), (&b, 0)] {
        assert_eq!(operator.admin("/readyz").await.0, "HTTP/1.1 200 OK");
        assert_eq!(operator.admin("/healthz").await.0, "HTTP/1.1 200 OK");
        let (status, metrics) = operator.admin("/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(metrics.contains(&format!("\nsluice_operator_leading {leading}\n")), "{metrics}");
        assert!(metrics.contains("# TYPE sluice_operator_status_writes_total counter"), "{metrics}");
        promtool_check(&metrics);
    }

    // The leader dies without letting go: the follower takes the lease
    // once it expires (3 s here) and writes what changed meanwhile.
    a.kill();
    apply(&client, &route("after-a-died")).await.expect("route");
    let started = Instant::now();
    let accepted = condition_of(&client, "ApiRoute", Some("shop"), "after-a-died", "Accepted").await;
    assert_eq!(accepted["status"], "True");
    assert_eq!(holder().await.as_deref(), Some("op-b"), "{}", b.log());
    assert!(b.log().contains("leading: took lease"), "{}", b.log());
    assert!(started.elapsed() < Duration::from_secs(15), "failover took {:?}", started.elapsed());
}

/// The patch an approver sends.
async fn set_state(client: &kube::Client, state: &str) {
    let api: Api<crds::Subscription> = Api::namespaced(client.clone(), "partner");
    let patch = json!({ "spec": { "approval": { "state": state, "decidedBy": "alice" } } });
    api.patch("web-orders", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("patch");
}

#[tokio::test]
async fn an_approved_app_gets_a_key_whose_hash_is_compiled_and_revoking_withdraws_it() {
    use k8s_openapi::api::core::v1::Secret;
    let cluster = cluster_with(&["examples/quickstart/tenants.yaml"]).await;
    let client = cluster.client().await.expect("client");
    let handle = in_process(&client);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "partner");
    let subscriptions: Api<crds::Subscription> = Api::namespaced(client.clone(), "partner");
    condition_of(&client, "Subscription", Some("partner"), "web-orders", "Accepted").await;
    assert!(secrets.get_opt("sluice-key-web").await.expect("get").is_none(), "no key while Pending");

    set_state(&client, "Approved").await;
    // The app has a key of its own (the quickstart's web-key): it serves.
    let named = eventually("keySecretName of the app's own key", Duration::from_secs(20), || async {
        subscriptions.get("web-orders").await.ok()?.status?.key_secret_name
    })
    .await;
    assert_eq!(named, "web-key");
    assert!(secrets.get_opt("sluice-key-web").await.expect("get").is_none(), "nothing issued over the user's key");
    // Without it, the operator issues one.
    secrets.delete("web-key", &Default::default()).await.expect("delete");
    let secret = eventually("a key Secret for app web", Duration::from_secs(20), || async {
        secrets.get_opt("sluice-key-web").await.ok().flatten()
    })
    .await;
    assert_eq!(secret.type_.as_deref(), Some("sluice.dev/api-key"));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("sluice.dev/app").map(String::as_str), Some("web"));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!((owners[0].kind.as_str(), owners[0].name.as_str()), ("Subscription", "web-orders"));
    let key = String::from_utf8(secret.data.unwrap_or_default()["api-key"].0.clone()).expect("text");
    assert!(key.starts_with("sk-") && key.len() == 46, "256 random bits: {key}");
    eventually("keySecretName of the issued key", Duration::from_secs(20), || async {
        let status = subscriptions.get("web-orders").await.ok()?.status?;
        (status.key_secret_name.as_deref() == Some("sluice-key-web")).then_some(())
    })
    .await;
    let hash = snapshot::api_keys::hash_api_key(&key);
    let compiled = |hash: String, present: bool| {
        let mut rx = handle.translation.clone();
        async move {
            eventually("the key's hash in the compiled snapshot", Duration::from_secs(20), || {
                let t = rx.borrow_and_update().clone();
                let hash = hash.clone();
                async move {
                    let t = t?;
                    (t.snapshot.api_key(&hash).is_some() == present).then_some(())
                }
            })
            .await
        }
    };
    compiled(hash.clone(), true).await;

    // Deleting the Secret rotates the key.
    secrets.delete("sluice-key-web", &Default::default()).await.expect("delete");
    let rotated = eventually("a new key", Duration::from_secs(20), || async {
        let secret = secrets.get_opt("sluice-key-web").await.ok().flatten()?;
        let key = String::from_utf8(secret.data?.get("api-key")?.0.clone()).ok()?;
        Some(key)
    })
    .await;
    assert_ne!(rotated, key, "a new key, not the old one again");
    compiled(hash, false).await;

    // Revoked: the key is withdrawn and its hash leaves the snapshot.
    set_state(&client, "Revoked").await;
    eventually("the key Secret withdrawn", Duration::from_secs(20), || async {
        secrets.get_opt("sluice-key-web").await.ok().flatten().is_none().then_some(())
    })
    .await;
    compiled(snapshot::api_keys::hash_api_key(&rotated), false).await;
}

#[tokio::test]
async fn the_operator_survives_a_restart_of_the_api_server() {
    let mut cluster = cluster_with(&["examples/quickstart/tenants.yaml"]).await;
    let operator = Operator::start(&cluster, "op-a");
    let client = cluster.client().await.expect("client");
    condition_of(&client, "ApiRoute", Some("shop"), "orders", "Accepted").await;

    // The API server crashes and comes back: every watch breaks.
    cluster.restart_apiserver().await.expect("the API server is back");
    let client = cluster.client().await.expect("client");
    let route = json!({
        "apiVersion": crds::API_VERSION, "kind": "ApiRoute",
        "metadata": { "name": "after-restart", "namespace": "shop" },
        "spec": { "hosts": ["api.localhost"], "matches": [{ "path": { "type": "PathPrefix", "value": "/after" } }],
                  "backend": { "directResponse": { "status": 200 } } }
    });
    apply(&client, &route).await.expect("route");
    let accepted = condition_of(&client, "ApiRoute", Some("shop"), "after-restart", "Accepted").await;
    assert_eq!(accepted["status"], "True", "{}", operator.log());
}

/// `promtool check metrics` (from Debian's prometheus package, which
/// scripts/test unpacks) finds nothing wrong with an exposition.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cached = home.join(".cache/sluice/tools/usr/bin/promtool");
    let promtool = if cached.is_file() { cached } else { PathBuf::from("promtool") };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs (scripts/test unpacks it): {e}", promtool.display()));
    child.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn ingresses_of_sluices_classes_are_compiled_the_default_class_included() {
    let cluster = cluster_with(&[]).await;
    let client = cluster.client().await.expect("client");
    let handle = in_process(&client);
    let objects = [
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": { "name": "edge", "annotations": { "ingressclass.kubernetes.io/is-default-class": "true" } },
                "spec": { "controller": crds::INGRESS_CONTROLLER } }),
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web", "namespace": "default" },
                "spec": { "ports": [{ "port": 80 }] } }),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "classless", "namespace": "default" },
                "spec": { "rules": [{ "host": "www.example.com", "http": { "paths": [
                    { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] } }),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "other", "namespace": "default" },
                "spec": { "ingressClassName": "nginx", "rules": [{ "host": "nginx.example.com", "http": { "paths": [
                    { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] } }),
    ];
    for object in &objects {
        apply(&client, object).await.expect("applies");
    }
    let mut rx = handle.translation.clone();
    let routes = eventually("the classless Ingress compiled", Duration::from_secs(30), || {
        let translation = rx.borrow_and_update().clone();
        async move {
            let routes: Vec<String> = translation?.snapshot.routes.iter().map(|r| r.id.clone()).collect();
            routes.iter().any(|id| id.starts_with("ingress:default/classless")).then_some(routes)
        }
    })
    .await;
    assert!(!routes.iter().any(|id| id.contains("/other")), "another controller's Ingress is not Sluice's: {routes:?}");
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let cluster = cluster_with(&["examples/quickstart/tenants.yaml"]).await;
    let client = cluster.client().await.expect("client");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async { leases.get_opt("sluice-operator").await.ok().flatten()?.spec?.holder_identity };
    // A long lease: without a release, the follower would wait 30 s.
    let start = |identity: &str| {
        let kubeconfig = cluster.kubeconfig().expect("kubeconfig");
        let log = kubeconfig.with_file_name(format!("operator-{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
            .args(["--identity", identity, "--lease-namespace", "default", "--lease-duration", "30"])
            .args(["--admin", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("starts");
        Operator { child, log }
    };
    let a = start("op-a");
    eventually("op-a to lead", Duration::from_secs(20), || async { (holder().await? == "op-a").then_some(()) }).await;
    let b = start("op-b");
    eventually("op-b to sync", Duration::from_secs(20), || async { b.log().contains("caches synced").then_some(()) })
        .await;
    let pid = a.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    eventually("op-b to take over", Duration::from_secs(20), || async { (holder().await? == "op-b").then_some(()) })
        .await;
    // Released, it is taken at the follower's next look (every 2 s).
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}: the lease was not released", started.elapsed());
    assert!(a.log().contains("released lease"), "{}", a.log());
}
