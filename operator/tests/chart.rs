//! The Helm chart against a real kube-apiserver: `helm install` succeeds
//! and creates what it should (no kubelet, so pods never run: the test
//! asserts on the objects); the operator runs with a token of the chart's
//! own ServiceAccount, so a verb missing from the chart's RBAC fails here;
//! and the chart's admission policy lets only a tenant's approvers decide on
//! subscriptions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testcluster::{Cluster, apply, eventually};

const NAMESPACE: &str = "sluice-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command against the cluster (its admin kubeconfig); panics with
/// its output unless it succeeds. Returns its stderr.
fn run_ok(cluster: &Cluster, program: PathBuf, args: &[&str], what: &str) -> String {
    let kubeconfig = cluster.kubeconfig().expect("kubeconfig");
    let output = Command::new(&program)
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{} runs (scripts/test unpacks it into ~/.cache/sluice/tools/helm): {e}", program.display())
        });
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stderr.into_owned()
}

/// `helm install sluice charts/sluice` into the cluster, with `extra` flags.
fn helm_install(cluster: &Cluster, extra: &[&str]) {
    let chart = repo().join("charts/sluice");
    let mut args =
        vec!["install", "sluice", chart.to_str().expect("path"), "--namespace", NAMESPACE, "--create-namespace"];
    args.extend(extra);
    let stderr = run_ok(cluster, testcluster::helm(), &args, "helm install");
    assert!(!stderr.contains("unrecognized format"), "the CRDs have formats the API server does not know:\n{stderr}");
}

#[tokio::test]
async fn the_chart_installs_and_the_operator_runs_as_its_service_account() {
    let cluster = Cluster::start().await.expect("a control plane");
    helm_install(&cluster, &[]);
    let client = cluster.client().await.expect("client");

    // What the chart made.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["apiroutes.sluice.dev", "tenants.sluice.dev", "subscriptions.sluice.dev", "aiproviders.sluice.dev"] {
        crds.get(name).await.unwrap_or_else(|e| panic!("CRD {name}: {e}"));
    }
    let deployment =
        Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get("sluice-operator").await.expect("operator");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas, one leading");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice-operator"));
    let security = pod.security_context.expect("pod security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.seccomp_profile.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("container security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(container.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "resource requests");
    let probe =
        |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()?.path.clone());
    assert_eq!(probe(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert!(container.args.as_deref().unwrap_or_default().contains(&"--admin=0.0.0.0:9902".to_owned()));
    Api::<IngressClass>::all(client.clone()).get("sluice").await.expect("IngressClass sluice");
    Api::<ValidatingAdmissionPolicy>::all(client.clone()).get("sluice-subscription-approval").await.expect("policy");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .get("sluice-subscription-approval")
        .await
        .expect("binding");

    // Every example, the way a user applies it (kubectl reads YAML 1.1:
    // a field named `on` would arrive as "true").
    let examples = repo().join("examples");
    run_ok(
        &cluster,
        testcluster::kubectl(),
        &["apply", "-R", "-f", examples.to_str().expect("path")],
        "kubectl apply -R -f examples/",
    );

    // The operator as the chart's ServiceAccount, with the chart's args.
    let token = cluster.service_account_token(NAMESPACE, "sluice-operator").await.expect("a token");
    let kubeconfig = cluster.kubeconfig_for("operator-sa", &token).expect("kubeconfig");
    let log = kubeconfig.with_file_name("operator-sa.log");
    let mut operator = Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
        .args(["--lease-name", "sluice-operator", "--identity", "sluice-operator-0", "--lease-duration", "3"])
        .args(["--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NAMESPACE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("the operator starts");
    let routes: Api<crds::ApiRoute> = Api::namespaced(client.clone(), "shop");
    let accepted =
        eventually("the operator, as its ServiceAccount, to write status", Duration::from_secs(30), || async {
            let route = routes.get("orders").await.ok()?;
            let status = route.status?;
            status.conditions.into_iter().find(|c| c.type_ == "Accepted")
        })
        .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(accepted.status, "True", "{log}");
    assert!(!log.contains("forbidden") && !log.contains("Forbidden"), "the chart's RBAC lacks a verb:\n{log}");

    // And no more than it needs: it cannot change specs or read Secrets by name.
    let sa = cluster.client_as(&token).await.expect("SA client");
    let denied = Api::<crds::ApiRoute>::namespaced(sa.clone(), "shop").delete("orders", &DeleteParams::default()).await;
    assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "{denied:?}");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sa, "shop");
    let denied = secrets.get("console-key").await;
    assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "{denied:?}");
}

/// A patch of the Subscription's approval state by `client`; dry-run when
/// `dry` (to probe whether the policy is in force yet).
async fn decide(client: &kube::Client, who: &str, state: &str, dry: bool) -> Result<(), kube::core::Status> {
    let api: Api<crds::Subscription> = Api::namespaced(client.clone(), "partner");
    let params = PatchParams { dry_run: dry, ..PatchParams::default() };
    let patch = json!({ "spec": { "approval": { "state": state, "decidedBy": who } } });
    match api.patch("web-orders", &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(*status),
        Err(other) => panic!("not an API answer: {other}"),
    }
}

#[tokio::test]
async fn only_a_tenants_approvers_may_decide_on_its_subscriptions() {
    let users: &[(&str, &[&str])] = &[("alice", &[]), ("bob", &["shop-approvers"]), ("mallory", &[])];
    let cluster = Cluster::start_with_users(users).await.expect("a control plane");
    helm_install(&cluster, &[]);
    let admin = cluster.client().await.expect("client");
    cluster.apply_files(&[repo().join("examples/quickstart/tenants.yaml")]).await.expect("examples");
    // shop's approvers: alice by name, the group shop-approvers (bob).
    let approvers = json!({ "apiVersion": crds::API_VERSION, "kind": "Tenant", "metadata": { "name": "shop" },
        "spec": { "namespaces": ["shop"], "hostnames": ["api.localhost"], "apps": [{ "name": "console" }],
                  "approvers": { "users": ["alice"], "groups": ["shop-approvers"] } } });
    apply(&admin, &approvers).await.expect("approvers");
    // Everyone may edit Subscriptions as far as RBAC goes: the policy decides.
    let editor = json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": { "name": "subscription-editor" },
        "rules": [{ "apiGroups": ["sluice.dev"], "resources": ["subscriptions"],
                    "verbs": ["get", "list", "create", "update", "patch", "delete"] }] });
    apply(&admin, &editor).await.expect("role");
    let binding = json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "subscription-editors" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "subscription-editor" },
        "subjects": users.iter().map(|(u, _)| json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u })).collect::<Vec<_>>() });
    apply(&admin, &binding).await.expect("binding");

    let as_user = |name: &str| cluster.client_as(cluster.token(name).expect("token"));
    let (alice, bob, mallory) =
        (as_user("alice").await.expect("c"), as_user("bob").await.expect("c"), as_user("mallory").await.expect("c"));
    // The policy takes a moment to reach the API server's admission chain.
    eventually("the approval policy to be in force", Duration::from_secs(30), || async {
        decide(&mallory, "mallory", "Approved", true).await.err()
    })
    .await;

    let refused = decide(&mallory, "mallory", "Approved", false).await.expect_err("mallory is no approver");
    assert_eq!(refused.code, 403, "{refused:?}");
    assert!(refused.message.contains("only an approver of tenant shop"), "{}", refused.message);
    assert!(refused.message.contains("mallory may not move it from Pending to Approved"), "{}", refused.message);

    // An approver must sign as herself.
    let refused = decide(&alice, "bob", "Approved", false).await.expect_err("decidedBy is who decides");
    assert!(refused.message.contains("decidedBy must name who decides (alice)"), "{}", refused.message);
    decide(&alice, "alice", "Approved", false).await.expect("alice approves, by name");
    let refused = decide(&mallory, "mallory", "Revoked", false).await.expect_err("nor may mallory revoke");
    assert!(refused.message.contains("from Approved to Revoked"), "{}", refused.message);
    decide(&bob, "bob", "Revoked", false).await.expect("bob revokes, through his group");

    // Creating one already decided is deciding too; a Pending one anyone
    // allowed by RBAC may ask for, and other edits are not decisions.
    let api: Api<crds::Subscription> = Api::namespaced(mallory.clone(), "partner");
    let new = |name: &str, state: &str| -> crds::Subscription {
        serde_json::from_value(json!({ "apiVersion": crds::API_VERSION, "kind": "Subscription",
            "metadata": { "name": name, "namespace": "partner" },
            "spec": { "app": "web", "route": { "namespace": "shop", "name": "orders" }, "approval": { "state": state, "decidedBy": "mallory" } } }))
        .expect("subscription")
    };
    let refused = api.create(&PostParams::default(), &new("self-approved", "Approved")).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403), "{refused:?}");
    api.create(&PostParams::default(), &new("asking", "Pending")).await.expect("asking is allowed");
    let label = json!({ "metadata": { "labels": { "team": "web" } } });
    api.patch("web-orders", &PatchParams::default(), &Patch::Merge(&label)).await.expect("a label is no decision");
    let stored: Value = serde_json::to_value(api.get("web-orders").await.expect("get")).expect("json");
    assert_eq!(stored["spec"]["approval"]["state"], "Revoked");
    // Cluster admins are exempt (approvalPolicy.exemptGroups).
    decide(&admin, "platform-team", "Approved", false).await.expect("an admin may");
}

#[tokio::test]
async fn non_default_values_install_and_exempt_users_are_set_by_values() {
    let users: &[(&str, &[&str])] = &[("gitops", &[]), ("mallory", &[])];
    let cluster = Cluster::start_with_users(users).await.expect("a control plane");
    // Every value changed (charts/sluice/ci/non-default-values.yaml: the
    // API server takes every object it renders), and the test's user exempt.
    let values = cluster.kubeconfig().expect("dir").with_file_name("values.yaml");
    std::fs::write(&values, "approvalPolicy:\n  exemptUsers: [gitops]\n  exemptGroups: []\n").expect("values");
    let non_default = repo().join("charts/sluice/ci/non-default-values.yaml");
    helm_install(
        &cluster,
        &["--values", non_default.to_str().expect("path"), "--values", values.to_str().expect("path")],
    );
    let deployment = Api::<Deployment>::namespaced(cluster.client().await.expect("client"), NAMESPACE)
        .get("sluice-operator")
        .await
        .expect("operator");
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3), "the values are applied");
    let admin = cluster.client().await.expect("client");
    cluster.apply_files(&[repo().join("examples/quickstart/tenants.yaml")]).await.expect("examples");
    let editor = json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "editors" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": users.iter().map(|(u, _)| json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u })).collect::<Vec<_>>() });
    apply(&admin, &editor).await.expect("binding");
    let gitops = cluster.client_as(cluster.token("gitops").expect("token")).await.expect("client");
    let mallory = cluster.client_as(cluster.token("mallory").expect("token")).await.expect("client");
    eventually("the approval policy to be in force", Duration::from_secs(30), || async {
        decide(&mallory, "mallory", "Approved", true).await.err()
    })
    .await;
    // Not even a cluster admin by role is exempt now; the named user is.
    decide(&admin, "sluice-admin", "Approved", true).await.expect_err("system:masters is no longer exempt");
    decide(&gitops, "alice", "Approved", false).await.expect("the GitOps user applies alice's decision");
}
