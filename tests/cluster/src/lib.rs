//! A real Kubernetes control plane for Sluice's tests: `etcd` and
//! `kube-apiserver` (built from the Go module proxy by `scripts/k8s-bins`)
//! on 127.0.0.1, the way controller-runtime's envtest runs them: no kubelet,
//! no controllers, so pods never run, but everything the operator talks to
//! is the real thing (structural schemas and CEL rules, server-side apply,
//! the status subresource, RBAC, Leases, ValidatingAdmissionPolicy).
//!
//! ```text
//!   Cluster::start()
//!     ├─ a throwaway PKI (CA, serving cert for 127.0.0.1, SA signing key)
//!     ├─ etcd            127.0.0.1:<os port>   (data in a temp dir)
//!     └─ kube-apiserver  https://127.0.0.1:<os port>
//!            token auth: one admin token (system:masters); RBAC on
//!   cluster.client()       -> kube::Client as the admin
//!   cluster.client_as(tok) -> kube::Client with another bearer token
//!   cluster.kubeconfig()   -> a kubeconfig file, for processes (kubectl, helm, the operator)
//! ```
//!
//! Each test starts its own cluster (a few seconds) and the cluster stops
//! when the value is dropped. Ports are picked by the OS (bound, released,
//! then handed to the server: the same small race envtest accepts).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiResource, Scope};
use serde::Deserialize as _;
use serde_json::Value;

/// The field manager the test harness applies with.
pub const FIELD_MANAGER: &str = "sluice-tests";

/// How long the control plane may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// What can go wrong in the harness; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find kube-apiserver and etcd: {0} (run scripts/k8s-bins)")]
    Binaries(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the test PKI: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("{0} did not become ready in time; its log ends:\n{1}")]
    NotReady(&'static str, String),
    #[error("{0} exited early; its log ends:\n{1}")]
    Exited(&'static str, String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{file}: {message}")]
    Manifest { file: String, message: String },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A running etcd + kube-apiserver, stopped on drop.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    etcd: Child,
    apiserver: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The cluster CA, PEM: what clients trust.
    pub ca_pem: String,
    admin_token: String,
    /// Tokens of the users given to [`Cluster::start_with_users`].
    user_tokens: Vec<(String, String)>,
    /// How kube-apiserver was started, to start it again.
    apiserver_command: Command,
}

impl Cluster {
    /// Starts a fresh control plane and waits until it serves.
    pub async fn start() -> Result<Cluster> {
        Cluster::start_with_users(&[]).await
    }

    /// Starts a control plane that also knows `users`, each `(name,
    /// groups)` with a bearer token of its own ([`Cluster::token`]). They
    /// have no RBAC permission until a test grants one.
    pub async fn start_with_users(users: &[(&str, &[&str])]) -> Result<Cluster> {
        // NB: a port the OS handed out and we released can be taken again
        // (by an outgoing connection's source port) before the server binds
        // it; envtest retries too.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Cluster::start_once(users).await {
                Err(Error::Exited(_, log)) if attempt < 5 && log.contains("address already in use") => continue,
                other => return other,
            }
        }
    }

    async fn start_once(users: &[(&str, &[&str])]) -> Result<Cluster> {
        let bins = binaries()?;
        let dir = temp_dir()?;
        let pki = Pki::new()?;
        write(&dir.join("ca.crt"), &pki.ca_pem)?;
        write(&dir.join("apiserver.crt"), &pki.server_cert_pem)?;
        write(&dir.join("apiserver.key"), &pki.server_key_pem)?;
        write(&dir.join("sa.key"), &pki.sa_key_pem)?;
        write(&dir.join("sa.pub"), &pki.sa_pub_pem)?;
        let admin_token = random_token()?;
        let mut tokens = format!("{admin_token},sluice-admin,sluice-admin-uid,\"system:masters\"\n");
        let mut user_tokens = Vec::new();
        for (name, groups) in users {
            let token = random_token()?;
            tokens.push_str(&format!("{token},{name},{name}-uid,\"{}\"\n", groups.join(",")));
            user_tokens.push(((*name).to_owned(), token));
        }
        write(&dir.join("tokens.csv"), &tokens)?;

        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn(
            Command::new(bins.join("etcd")).args([
                "--name=default",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]),
            &dir.join("etcd.log"),
        )?;

        let port = free_port()?;
        let d = |name: &str| dir.join(name).display().to_string();
        let apiserver_command = {
            let mut command = Command::new(bins.join("kube-apiserver"));
            command.args([
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={port}"),
                "--endpoint-reconciler-type=none",
                &format!("--cert-dir={}", d("certs")),
                &format!("--tls-cert-file={}", d("apiserver.crt")),
                &format!("--tls-private-key-file={}", d("apiserver.key")),
                &format!("--client-ca-file={}", d("ca.crt")),
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                // NB: no controller-manager makes default ServiceAccounts,
                // so the plugin that requires them would refuse every pod.
                "--disable-admission-plugins=ServiceAccount",
                "--v=0",
            ]);
            command
        };
        let apiserver = spawn_again(&apiserver_command, &dir.join("apiserver.log"))?;
        let mut cluster = Cluster {
            dir,
            etcd,
            apiserver,
            apiserver_command,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: pki.ca_pem,
            admin_token,
            user_tokens,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits for `/readyz` and the `default` namespace (what envtest waits
    /// for), failing early if a process exits.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client().await?;
        loop {
            if let Ok(Some(_)) = self.etcd.try_wait() {
                return Err(Error::Exited("etcd", self.log_tail("etcd.log")));
            }
            if let Ok(Some(_)) = self.apiserver.try_wait() {
                return Err(Error::Exited("kube-apiserver", self.log_tail("apiserver.log")));
            }
            let ready = client.request_text(http_get("/readyz")).await.is_ok_and(|body| body.trim() == "ok");
            if ready {
                let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
                if namespaces.get_opt("default").await.is_ok_and(|ns| ns.is_some()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady("kube-apiserver", self.log_tail("apiserver.log")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops kube-apiserver (SIGKILL, as a crash) and starts it again on the
    /// same port and etcd, waiting until it serves: what a control-plane
    /// upgrade or crash looks like to clients.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        self.apiserver = spawn_again(&self.apiserver_command, &self.dir.join("apiserver.log"))?;
        self.wait_ready().await
    }

    /// The end of a server's log, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The bearer token of a user given to [`Cluster::start_with_users`].
    pub fn token(&self, user: &str) -> Option<&str> {
        self.user_tokens.iter().find(|(name, _)| name == user).map(|(_, token)| token.as_str())
    }

    /// A token for a ServiceAccount (the TokenRequest API, as a kubelet
    /// asks for a pod's projected token), valid for an hour.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 }
        });
        let answer: TokenRequest = api.create_subresource("token", name, &Default::default(), &request).await?;
        Ok(answer.status.map(|s| s.token).unwrap_or_default())
    }

    /// Writes a kubeconfig for `token` next to the cluster's files (for a
    /// process acting as someone else) and returns its path.
    pub fn kubeconfig_for(&self, label: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{label}.kubeconfig"));
        write(&path, &self.kubeconfig_yaml(token))?;
        Ok(path)
    }

    /// A kubeconfig for `token` (YAML).
    pub fn kubeconfig_yaml(&self, token: &str) -> String {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64(self.ca_pem.as_bytes()),
            }}],
            "users": [{ "name": "user", "user": { "token": token } }],
            "contexts": [{ "name": "test", "context": { "cluster": "test", "user": "user", "namespace": "default" } }],
            "current-context": "test",
        });
        serde_yaml::to_string(&config).unwrap_or_default()
    }

    /// Writes the admin's kubeconfig next to the cluster's files and
    /// returns its path (for `KUBECONFIG` of kubectl, helm, the operator).
    pub fn kubeconfig(&self) -> Result<PathBuf> {
        let path = self.dir.join("admin.kubeconfig");
        write(&path, &self.kubeconfig_yaml(&self.admin_token))?;
        Ok(path)
    }

    /// A client acting as the cluster admin.
    pub async fn client(&self) -> Result<kube::Client> {
        self.client_as(&self.admin_token.clone()).await
    }

    /// A client sending `token` (a ServiceAccount's, say).
    pub async fn client_as(&self, token: &str) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml(token))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Applies every object in the YAML `files` (server-side apply as
    /// [`FIELD_MANAGER`]): CRDs first, waiting until they are served, then
    /// namespaces, then the rest. Returns each object as the server stored
    /// it, or the first refusal, naming its file and object.
    pub async fn apply_files(&self, files: &[PathBuf]) -> Result<Vec<DynamicObject>> {
        let mut objects = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(io(format!("reading {}", file.display())))?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(document)
                    .map_err(|e| Error::Manifest { file: file.display().to_string(), message: e.to_string() })?;
                if !value.is_null() {
                    objects.push((file.display().to_string(), value));
                }
            }
        }
        let rank = |v: &Value| match v["kind"].as_str() {
            Some("CustomResourceDefinition") => 0,
            Some("Namespace") => 1,
            _ => 2,
        };
        objects.sort_by_key(|(_, v)| rank(v));
        let client = self.client().await?;
        let mut applied = Vec::new();
        let mut namespaces = std::collections::BTreeSet::new();
        for (file, value) in objects {
            if rank(&value) == 2
                && let Some(namespace) = value["metadata"]["namespace"].as_str()
                && namespaces.insert(namespace.to_owned())
            {
                self.ensure_namespace(&client, namespace).await?;
            }
            let name = format!("{} {}", value["kind"].as_str().unwrap_or("?"), value["metadata"]["name"]);
            let object = apply(&client, &value)
                .await
                .map_err(|e| Error::Manifest { file: file.clone(), message: format!("{name}: {e}") })?;
            if rank(&value) == 0 {
                self.wait_established(&client, object.metadata.name.as_deref().unwrap_or_default()).await?;
            }
            applied.push(object);
        }
        Ok(applied)
    }

    /// Creates a namespace unless it exists.
    pub async fn ensure_namespace(&self, client: &kube::Client, name: &str) -> Result<()> {
        let value = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
        apply(client, &value).await?;
        Ok(())
    }

    /// Waits until a CRD is `Established` (its API is served).
    async fn wait_established(&self, client: &kube::Client, name: &str) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = crds.get(name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady("a CustomResourceDefinition", name.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("SLUICE_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Server-side applies one object given as JSON (any kind the server
/// knows: its plural and scope come from discovery).
pub async fn apply(client: &kube::Client, value: &Value) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(value.clone()).map_err(kube::Error::SerdeError)?;
    let api = dynamic_api(client, value).await?;
    let name = object.metadata.name.clone().unwrap_or_default();
    // NB: a CRD is Established before server-side apply knows its schema
    // (the API server updates its type models asynchronously), so a first
    // apply can be refused as "field not declared in schema": wait a little.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(value)).await {
            Err(kube::Error::Api(status))
                if status.code == 500
                    && status.message.contains("failed to create typed patch object")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The API for the kind of `value` (apiVersion and kind), in its namespace
/// when the kind is namespaced.
pub async fn dynamic_api(client: &kube::Client, value: &Value) -> Result<Api<DynamicObject>, kube::Error> {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities): (ApiResource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(match (capabilities.scope, value["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client.clone(), namespace, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    })
}

/// Waits (polling every 50 ms, up to `within`) until `check` returns
/// Some; panics naming `what` when it does not. For tests: a condition
/// awaited, never a sleep.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `helm` binary `scripts/test` unpacks into the cache (else `helm` on
/// the PATH).
pub fn helm() -> PathBuf {
    tool("helm")
}

/// The `kubectl` binary that comes with it (a YAML 1.1 reader, as users'
/// is: the examples must survive it).
pub fn kubectl() -> PathBuf {
    tool("kubectl")
}

fn tool(name: &str) -> PathBuf {
    let cached = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|cache| cache.join("sluice/tools/helm").join(name));
    cached.filter(|c| c.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    let mut request = http::Request::new(Vec::new());
    *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
    request
}

/// Where `scripts/k8s-bins` put (or now puts) the binaries.
fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_K8S_BINS").map(PathBuf::from)
        && dir.join("kube-apiserver").is_file()
    {
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-bins");
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Binaries(format!("running {}: {e}", script.display())))?;
    if !output.status.success() {
        return Err(Error::Binaries(format!("{} failed ({})", script.display(), output.status)));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !dir.join("kube-apiserver").is_file() || !dir.join("etcd").is_file() {
        return Err(Error::Binaries(format!("{} has no kube-apiserver and etcd", dir.display())));
    }
    Ok(dir)
}

/// Spawns a copy of `command` (so it can be spawned again later).
fn spawn_again(command: &Command, log: &Path) -> Result<Child> {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    spawn(&mut copy, log)
}

fn spawn(command: &mut Command, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = file.try_clone().map_err(io("cloning a log handle"))?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(io(format!("starting {}", command.get_program().to_string_lossy())))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io("reading a bound address"))?.port())
}

fn temp_dir() -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-cluster-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir_all(dir.join("certs")).map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes()).map_err(io(format!("writing {}", path.display())))
}

/// 128 random bits from the OS, as hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Io { what: "drawing a random token".into(), source: std::io::Error::other("getrandom") })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The cluster's certificates and keys, PEM.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Pki {
    fn new() -> Result<Pki> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "sluice-test-ca");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let names = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"];
        let mut params = CertificateParams::new(names.map(String::from).to_vec())?;
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let server_key = KeyPair::generate()?;
        let server = params.signed_by(&server_key, &ca)?;
        // ES256 service-account tokens (the API server takes ECDSA keys).
        let sa = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
        })
    }
}
