//! The CRDs as the API server sees them: their shape (names, scope, printer
//! columns, status), the committed YAML under `charts/sluice/crds/`, and
//! every CEL rule (`x-kubernetes-validations`), each with an object that
//! breaks it and valid objects that pass all of them.
//!
//! The CEL rules are evaluated with `kube-cel`, which applies the schema's
//! defaults first, as the API server does during admission.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::Resource;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_cel::{ErrorKind, ValidationError, Validator};
use serde_json::{Value, json};

// ── Shape ───────────────────────────────────────────────────────────────

/// What one CRD must look like.
struct Shape {
    stem: &'static str,
    kind: &'static str,
    singular: &'static str,
    short_name: &'static str,
    scope: &'static str,
    /// `(name, jsonPath, type)` of each printer column, in order.
    columns: &'static [(&'static str, &'static str, &'static str)],
}

const ACCEPTED_COLUMN: (&str, &str, &str) =
    ("Accepted", ".status.conditions[?(@.type==\"Accepted\")].status", "string");
const AGE_COLUMN: (&str, &str, &str) = ("Age", ".metadata.creationTimestamp", "date");

const SHAPES: &[Shape] = &[
    Shape {
        stem: "aiproviders",
        kind: "AiProvider",
        singular: "aiprovider",
        short_name: "aip",
        scope: "Namespaced",
        columns: &[
            ("Type", ".spec.type", "string"),
            ("Base URL", ".status.baseUrl", "string"),
            ACCEPTED_COLUMN,
            AGE_COLUMN,
        ],
    },
    Shape {
        stem: "apiroutes",
        kind: "ApiRoute",
        singular: "apiroute",
        short_name: "ar",
        scope: "Namespaced",
        columns: &[
            ("Hosts", ".spec.hosts", "string"),
            ("Version", ".spec.version", "string"),
            ("Lifecycle", ".spec.lifecycle.state", "string"),
            ACCEPTED_COLUMN,
            AGE_COLUMN,
        ],
    },
    Shape {
        stem: "subscriptions",
        kind: "Subscription",
        singular: "subscription",
        short_name: "sub",
        scope: "Namespaced",
        columns: &[
            ("App", ".spec.app", "string"),
            ("Route", ".spec.route.name", "string"),
            ("Phase", ".status.phase", "string"),
            AGE_COLUMN,
        ],
    },
    Shape {
        stem: "tenants",
        kind: "Tenant",
        singular: "tenant",
        short_name: "tn",
        scope: "Cluster",
        columns: &[
            ("Display Name", ".spec.displayName", "string"),
            ("Namespaces", ".spec.namespaces", "string"),
            ACCEPTED_COLUMN,
            AGE_COLUMN,
        ],
    },
];

/// The `openAPIV3Schema` of the CRD's one version, as JSON.
fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = crd.spec.versions.first().expect("one version");
    let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema to JSON")
}

fn generated(kind: &str) -> CustomResourceDefinition {
    crds::all_crds()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no generated CRD of kind {kind}"))
}

#[test]
fn crd_shapes() {
    let all = crds::all_crds();
    let stems: Vec<&str> = all.iter().map(|(stem, _)| *stem).collect();
    let expected: Vec<&str> = SHAPES.iter().map(|s| s.stem).collect();
    assert_eq!(stems, expected, "all_crds() lists the four kinds in order");

    for ((stem, crd), shape) in all.iter().zip(SHAPES) {
        let kind = shape.kind;
        assert_eq!(crd.metadata.name.as_deref(), Some(format!("{stem}.sluice.dev").as_str()), "{kind}: name");
        assert_eq!(crd.spec.group, "sluice.dev", "{kind}: group");
        assert_eq!(crd.spec.group, crds::GROUP, "{kind}: group constant");
        assert_eq!(crd.spec.scope, shape.scope, "{kind}: scope");

        let names = &crd.spec.names;
        assert_eq!(names.kind, kind);
        assert_eq!(names.plural, *stem, "{kind}: plural is the file stem");
        assert_eq!(names.singular.as_deref(), Some(shape.singular), "{kind}: singular");
        assert_eq!(names.short_names, Some(vec![shape.short_name.to_owned()]), "{kind}: short names");
        assert_eq!(names.categories, Some(vec!["sluice".to_owned()]), "{kind}: categories");

        assert_eq!(crd.spec.versions.len(), 1, "{kind}: one version");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1", "{kind}: version");
        assert_eq!(version.name, crds::VERSION, "{kind}: version constant");
        assert!(version.served && version.storage, "{kind}: served and stored");

        let columns: Vec<(String, String, String)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone(), c.type_.clone()))
            .collect();
        let expected: Vec<(String, String, String)> =
            shape.columns.iter().map(|(n, p, t)| ((*n).to_owned(), (*p).to_owned(), (*t).to_owned())).collect();
        assert_eq!(columns, expected, "{kind}: printer columns (name, jsonPath, type)");

        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(subresources.status.is_some(), "{kind}: status subresource");
        assert!(subresources.scale.is_none(), "{kind}: no scale subresource");

        let schema = schema_of(crd);
        assert_eq!(schema["required"], json!(["spec"]), "{kind}: spec is required");
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["type"], "array", "{kind}: status.conditions is a list");
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}: status.conditions list type");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]), "{kind}: status.conditions map keys");
        let item = &conditions["items"];
        for property in ["type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"] {
            assert!(item["properties"].get(property).is_some(), "{kind}: status.conditions[] has {property}");
        }
        // A list-map key must be required (or defaulted) for the API server
        // to accept the CRD.
        let required = item["required"].as_array().expect("conditions[] required");
        assert!(required.contains(&json!("type")), "{kind}: status.conditions[].type is required");
    }
}

// ── Committed YAML ──────────────────────────────────────────────────────

#[test]
fn committed_yaml_matches_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();

    let all = crds::all_crds();
    let mut seen = BTreeSet::new();
    for path in &files {
        let shown = path.display();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {shown}: {e}"));

        let raw: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{shown}: not YAML: {e}"));
        assert_eq!(raw["apiVersion"].as_str(), Some(CustomResourceDefinition::API_VERSION), "{shown}: apiVersion");
        assert_eq!(raw["apiVersion"].as_str(), Some("apiextensions.k8s.io/v1"), "{shown}: apiVersion");
        assert_eq!(raw["kind"].as_str(), Some("CustomResourceDefinition"), "{shown}: kind");
        let parsed: CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{shown}: not a CustomResourceDefinition: {e}"));

        let stem = path.file_stem().and_then(|s| s.to_str()).expect("file stem");
        let (_, crd) = all
            .iter()
            .find(|(s, _)| *s == stem)
            .unwrap_or_else(|| panic!("{shown}: no CRD in crds::all_crds() is written to this file"));
        seen.insert(stem.to_owned());

        assert_eq!(parsed.metadata.name, crd.metadata.name, "{shown}: CRD name");
        assert!(parsed == *crd, "{shown} is stale: run `cargo run -p crds --bin crdgen`");
        let rendered = crds::render_crd(crd).expect("render");
        assert!(text == rendered, "{shown} is stale: run `cargo run -p crds --bin crdgen`");
    }
    let expected: BTreeSet<String> = all.iter().map(|(s, _)| (*s).to_owned()).collect();
    assert_eq!(seen, expected, "one file per CRD: run `cargo run -p crds --bin crdgen`");
}

// ── CEL rules ───────────────────────────────────────────────────────────

/// One `x-kubernetes-validations` rule and where it sits in the schema.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleAt {
    kind: String,
    /// Field path of the schema node, with `[]` for list items
    /// (`spec.matches[].path`).
    path: String,
    rule: String,
    message: String,
}

/// Every `x-kubernetes-validations` rule under `schema`.
fn collect_rules(kind: &str, schema: &Value, path: &str, out: &mut Vec<RuleAt>) {
    for validation in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let rule = validation["rule"].as_str().expect("rule is a string");
        let message =
            validation["message"].as_str().map(str::to_owned).unwrap_or_else(|| format!("failed rule: {rule}"));
        out.push(RuleAt { kind: kind.to_owned(), path: path.to_owned(), rule: rule.to_owned(), message });
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            collect_rules(kind, child, &child_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        collect_rules(kind, items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        collect_rules(kind, values, &format!("{path}[*]"), out);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for branch in schema.get(junctor).and_then(Value::as_array).into_iter().flatten() {
            collect_rules(kind, branch, path, out);
        }
    }
    if let Some(not) = schema.get("not") {
        collect_rules(kind, not, path, out);
    }
}

fn all_rules() -> Vec<RuleAt> {
    let mut rules = Vec::new();
    for (_, crd) in crds::all_crds() {
        collect_rules(&crd.spec.names.kind, &schema_of(&crd), "", &mut rules);
    }
    rules
}

/// `spec.matches[0].headers[1]` -> `spec.matches[].headers[]`.
fn schema_path(field_path: &str) -> String {
    let mut out = String::with_capacity(field_path.len());
    let mut in_index = false;
    for c in field_path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// A whole object of `kind` with this spec.
fn object(kind: &str, spec: Value) -> Value {
    let metadata = if kind == "Tenant" {
        json!({ "name": "team-a" })
    } else {
        json!({ "name": "example", "namespace": "team-a" })
    };
    json!({ "apiVersion": crds::API_VERSION, "kind": kind, "metadata": metadata, "spec": spec })
}

/// Structural problems the API server would reject or prune before CEL runs
/// (unknown fields, missing required fields, wrong types, values outside an
/// enum), so the cases below break only the rule they are about.
fn structural_problems(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            out.push(format!("{path}: null"));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{path}: {value} is not one of {}", schema["enum"]));
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        return;
    }
    if let (Some(properties), Some(fields)) = (schema["properties"].as_object(), value.as_object()) {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().expect("required names are strings");
            if !fields.contains_key(required) {
                out.push(format!("{path}: missing {required}"));
            }
        }
        for (name, field) in fields {
            let field_path = format!("{path}.{name}");
            match properties.get(name) {
                Some(field_schema) => structural_problems(field_schema, field, &field_path, out),
                // The API server adds these to every CRD's root schema.
                None if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) => {}
                None => out.push(format!("{field_path}: unknown field")),
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, item) in values.iter().enumerate() {
            structural_problems(items, item, &format!("{path}[{i}]"), out);
        }
    }
}

/// Validates `object` (as an update of `old` when given) against the CRD of
/// its kind, after checking that it is structurally valid.
fn validate(object: &Value, old: Option<&Value>) -> Vec<ValidationError> {
    let kind = object["kind"].as_str().expect("object has a kind");
    let schema = schema_of(&generated(kind));
    for checked in std::iter::once(object).chain(old) {
        let mut problems = Vec::new();
        structural_problems(&schema, checked, "", &mut problems);
        assert!(problems.is_empty(), "{kind} example is not structurally valid: {problems:#?}\n{checked:#}");
    }
    match Validator::new().validate(&schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec(),
    }
}

/// An object (or an update) that breaks exactly one rule.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    /// What the case shows, for failure messages.
    name: String,
    kind: String,
    /// Schema path of the node holding the rule (`spec.matches[].path`).
    at: String,
    /// The rule's message.
    message: String,
    spec: Value,
    /// The old spec, for a transition rule (an update).
    #[serde(default)]
    old_spec: Option<Value>,
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The cases of `tests/data/cel-cases.yaml` (shared with the cluster tests,
/// which send the same objects to a real API server).
fn invalid_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(data("cel-cases.yaml")).expect("tests/data/cel-cases.yaml");
    serde_yaml::from_str(&text).expect("tests/data/cel-cases.yaml is a list of cases")
}

/// The objects of `tests/data/valid-objects.yaml`: they pass every rule,
/// using as many of the ruled fields as possible so each rule is also seen
/// passing.
fn valid_objects() -> Vec<Value> {
    let text = std::fs::read_to_string(data("valid-objects.yaml")).expect("tests/data/valid-objects.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a valid object"))
        .collect()
}

fn with(mut base: Value, field: &str, value: Value) -> Value {
    base[field] = value;
    base
}

fn minimal_subscription() -> Value {
    json!({ "app": "web", "route": { "name": "orders-v1" } })
}

#[test]
fn every_cel_rule_compiles() {
    for (_, crd) in crds::all_crds() {
        let compiled = kube_cel::compile_schema(&schema_of(&crd));
        fn errors(node: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
            out.extend(node.compilation_errors().iter().map(|e| e.to_string()));
            node.properties.values().for_each(|child| errors(child, out));
            node.items.iter().chain(&node.additional_properties).for_each(|child| errors(child, out));
            node.all_of.iter().chain(&node.one_of).chain(&node.any_of).for_each(|child| errors(child, out));
        }
        let mut found = Vec::new();
        errors(&compiled, &mut found);
        assert!(found.is_empty(), "{}: rules that do not compile: {found:#?}", crd.spec.names.kind);
    }
}

#[test]
fn valid_objects_pass_every_rule() {
    let valid = valid_objects();
    for kind in ["Tenant", "ApiRoute", "Subscription", "AiProvider"] {
        assert!(valid.iter().any(|o| o["kind"] == kind), "no valid {kind} example");
    }
    for object in &valid {
        let errors = validate(object, None);
        assert!(errors.is_empty(), "valid object rejected on create: {errors:#?}\n{object:#}");
        // An update that changes nothing passes too (transition rules run).
        let errors = validate(object, Some(object));
        assert!(errors.is_empty(), "valid object rejected on a no-op update: {errors:#?}\n{object:#}");
        // And so does the typed form: the examples are what the types read.
        let kind = object["kind"].as_str().expect("kind");
        let typed = match kind {
            "Tenant" => serde_json::from_value::<crds::Tenant>(object.clone()).map(drop),
            "ApiRoute" => serde_json::from_value::<crds::ApiRoute>(object.clone()).map(drop),
            "Subscription" => serde_json::from_value::<crds::Subscription>(object.clone()).map(drop),
            "AiProvider" => serde_json::from_value::<crds::AiProvider>(object.clone()).map(drop),
            other => panic!("unknown kind {other}"),
        };
        typed.unwrap_or_else(|e| panic!("{kind} example does not deserialize: {e}\n{object:#}"));
    }
}

#[test]
fn subscription_update_that_keeps_app_and_route_passes() {
    let old = object("Subscription", minimal_subscription());
    let new = object(
        "Subscription",
        with(minimal_subscription(), "approval", json!({ "state": "Rejected", "decidedBy": "bob" })),
    );
    let errors = validate(&new, Some(&old));
    assert!(errors.is_empty(), "approving or rejecting is not a change of app or route: {errors:#?}");
    // On create there is no oldSelf: the transition rule does not run.
    let changed = object("Subscription", json!({ "app": "batch", "route": { "name": "other" } }));
    assert!(validate(&changed, None).is_empty(), "transition rules do not run on create");
}

#[test]
fn each_cel_rule_rejects_its_invalid_case() {
    let rules = all_rules();
    let cases = invalid_cases();
    let mut failures = Vec::new();

    for case in &cases {
        let Some(rule) = rules.iter().find(|r| r.kind == case.kind && r.path == case.at && r.message == case.message)
        else {
            failures
                .push(format!("{}: no {} rule at {} with message {:?}", case.name, case.kind, case.at, case.message));
            continue;
        };
        let new = object(&case.kind, case.spec.clone());
        let old = case.old_spec.clone().map(|spec| object(&case.kind, spec));
        let errors = validate(&new, old.as_ref());
        let hit = |e: &ValidationError| {
            e.message == case.message
                && e.rule == rule.rule
                && schema_path(&e.field_path) == case.at
                && e.kind == ErrorKind::ValidationFailure
        };
        if !errors.iter().any(hit) {
            failures.push(format!("{}: expected {:?} at {}, got {errors:#?}", case.name, case.message, case.at));
        } else if errors.len() != 1 {
            failures.push(format!("{}: breaks more than its rule: {errors:#?}", case.name));
        }
        if old.is_some() {
            // The same object on create: the transition rule is skipped.
            let on_create = validate(&new, None);
            if !on_create.is_empty() {
                failures.push(format!("{}: rejected on create too: {on_create:#?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} failing case(s):\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn every_cel_rule_has_an_invalid_case() {
    let rules = all_rules();
    let cases = invalid_cases();
    let uncovered: Vec<&RuleAt> = rules
        .iter()
        .filter(|r| !cases.iter().any(|c| c.kind == r.kind && c.at == r.path && c.message == r.message))
        .collect();
    assert!(uncovered.is_empty(), "CEL rules without an invalid case in invalid_cases(): {uncovered:#?}");
    // Pin the count so a rule that silently disappears is noticed too.
    assert_eq!(rules.len(), 24, "number of CEL rules across the four CRDs: {rules:#?}");
}

/// Property names that YAML 1.1 parsers (kubectl's and Helm's, through
/// sigs.k8s.io/yaml) read as booleans when unquoted: `on: [...]` arrives as
/// `"true": [...]`. No field may be named like that (`retries.on` was, and
/// a Helm-installed CRD had a property "true").
#[test]
fn no_field_is_a_yaml_1_1_boolean() {
    const BOOLEANS: [&str; 11] = ["y", "n", "yes", "no", "on", "off", "true", "false", "Y", "N", "NO"];
    fn walk(schema: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                if BOOLEANS.iter().any(|b| b.eq_ignore_ascii_case(name)) {
                    out.push(format!("{path}.{name}"));
                }
                walk(child, &format!("{path}.{name}"), out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if schema[key].is_object() {
                walk(&schema[key], path, out);
            }
        }
    }
    let mut found = Vec::new();
    for (_, crd) in crds::all_crds() {
        walk(&schema_of(&crd), &crd.spec.names.kind, &mut found);
    }
    assert!(found.is_empty(), "fields YAML 1.1 reads as booleans: {found:?}");
}

/// Every `format` in the schemas is one the API server knows (it warns on
/// others at every install).
#[test]
fn every_format_is_a_kubernetes_one() {
    const KNOWN: [&str; 8] = ["int32", "int64", "float", "double", "byte", "date", "date-time", "password"];
    fn walk(value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format")
                    && !KNOWN.contains(&format.as_str())
                {
                    out.push(format!("{path}: {format}"));
                }
                for (key, child) in map {
                    walk(child, &format!("{path}.{key}"), out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, path, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (_, crd) in crds::all_crds() {
        walk(&schema_of(&crd), &crd.spec.names.kind, &mut found);
    }
    assert!(found.is_empty(), "formats the API server does not know: {found:#?}");
}
