//! The generated CRDs against a real kube-apiserver: they install, every
//! example in `examples/` applies, every object of
//! `crds/tests/data/valid-objects.yaml` is accepted, and each case of
//! `crds/tests/data/cel-cases.yaml` is refused with its rule's message (the
//! same cases `crds/tests/crds.rs` checks in process with kube-cel: here the
//! API server's own CEL is the judge).

use std::path::{Path, PathBuf};

use kube::api::DeleteParams;
use serde::Deserialize;
use serde_json::{Value, json};
use testcluster::{Cluster, apply};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The YAML files under `dir`, sorted, in subfolders too.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

async fn with_crds() -> Cluster {
    let cluster = Cluster::start().await.expect("a control plane on 127.0.0.1");
    let crds = yaml_files(&repo().join("charts/sluice/crds"));
    assert_eq!(crds.len(), 4, "four CRDs in charts/sluice/crds: {crds:?}");
    cluster.apply_files(&crds).await.expect("the generated CRDs install");
    cluster
}

#[tokio::test]
async fn the_generated_crds_install_and_every_example_applies() {
    let cluster = with_crds().await;
    let files = yaml_files(&repo().join("examples"));
    let expected: usize = files.iter().map(|f| documents(f).len()).sum();
    assert!(expected > 10, "the examples hold objects: {files:?}");
    let applied = cluster.apply_files(&files).await.unwrap_or_else(|e| panic!("an example is refused: {e}"));
    assert_eq!(applied.len(), expected, "every example object is stored");
    for object in &applied {
        assert!(object.metadata.uid.is_some(), "stored with a uid: {:?}", object.metadata.name);
    }
    // The server kept what the examples say (nothing pruned as unknown).
    let client = cluster.client().await.expect("client");
    for file in &files {
        for document in documents(file) {
            let api = testcluster::dynamic_api(&client, &document).await.expect("a served kind");
            let name = document["metadata"]["name"].as_str().expect("a name");
            let stored = serde_json::to_value(api.get(name).await.expect("stored")).expect("JSON");
            if let Some(spec) = document.get("spec") {
                assert_subset(spec, &stored["spec"], &format!("{}: {name}.spec", file.display()));
            }
        }
    }
}

/// Every field of `expected` is in `actual` with the same value (the
/// server may add defaults).
fn assert_subset(expected: &Value, actual: &Value, at: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                let Some(found) = a.get(key) else { panic!("{at}.{key} was dropped by the API server") };
                assert_subset(value, found, &format!("{at}.{key}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{at}: list length");
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                assert_subset(e, a, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) => assert_eq!(e.as_f64(), a.as_f64(), "{at}"),
        _ => assert_eq!(expected, actual, "{at}"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    kind: String,
    message: String,
    spec: Value,
    #[serde(default)]
    old_spec: Option<Value>,
}

fn object(kind: &str, name: &str, spec: &Value) -> Value {
    let metadata = match kind {
        "Tenant" => json!({ "name": name }),
        _ => json!({ "name": name, "namespace": "cel" }),
    };
    json!({ "apiVersion": crds::API_VERSION, "kind": kind, "metadata": metadata, "spec": spec })
}

/// The API server's refusal of `object`, or None when it stored it.
async fn refusal(client: &kube::Client, object: &Value) -> Option<kube::core::Status> {
    match apply(client, object).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(*status),
        Err(other) => panic!("not an API answer: {other}"),
    }
}

#[tokio::test]
async fn each_cel_rule_refuses_its_invalid_case_and_valid_objects_pass() {
    let cluster = with_crds().await;
    let client = cluster.client().await.expect("client");
    cluster.ensure_namespace(&client, "cel").await.expect("namespace");
    let data = repo().join("crds/tests/data");

    let valid = documents(&data.join("valid-objects.yaml"));
    assert!(valid.len() >= 4, "valid objects of every kind");
    for (i, original) in valid.iter().enumerate() {
        let name = format!("valid-{i}");
        let object = object(original["kind"].as_str().expect("kind"), &name, &original["spec"]);
        if let Some(status) = refusal(&client, &object).await {
            panic!("valid object {i} refused: {} ({})\n{object:#}", status.message, status.reason);
        }
        // A no-op update passes the transition rules too.
        if let Some(status) = refusal(&client, &object).await {
            panic!("valid object {i} refused on update: {}", status.message);
        }
    }

    let text = std::fs::read_to_string(data.join("cel-cases.yaml")).expect("cel-cases.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(&text).expect("cases");
    assert!(cases.len() >= 24, "a case for each of the 24 rules");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("case-{i}");
        if let Some(old) = &case.old_spec {
            // A transition rule: the old object is accepted on create, the
            // change is refused on update.
            if let Some(status) = refusal(&client, &object(&case.kind, &name, old)).await {
                failures.push(format!("{}: the old object is refused: {}", case.name, status.message));
                continue;
            }
        }
        match refusal(&client, &object(&case.kind, &name, &case.spec)).await {
            None => failures.push(format!("{}: stored, expected {:?}", case.name, case.message)),
            Some(status) if status.code != 422 || !status.message.contains(&case.message) => failures.push(format!(
                "{}: expected 422 with {:?}, got {} {}",
                case.name, case.message, status.code, status.message
            )),
            Some(_) => {}
        }
        if case.old_spec.is_some() {
            let api = testcluster::dynamic_api(&client, &object(&case.kind, &name, &case.spec)).await.expect("api");
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) the API server judged otherwise:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
