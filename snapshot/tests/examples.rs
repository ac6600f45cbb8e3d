//! Every folder under `examples/` is a set of resources a newcomer can
//! apply: each must load, and compile with no False condition.

use std::path::{Path, PathBuf};

use snapshot::{Inputs, translate};

fn example_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_example_compiles_cleanly() {
    let dirs = example_dirs();
    assert!(!dirs.is_empty(), "no example folders");
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read example dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no YAML files", dir.display());
        let mut inputs = Inputs::default();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("read example");
            let added = inputs.load_yaml(&file.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(added > 0, "{} holds no objects", file.display());
        }
        let translation = translate(&inputs);
        let problems: Vec<String> =
            translation.problems().map(|s| format!("{}: {:?}", s.object, s.conditions)).collect();
        assert!(problems.is_empty(), "{}: objects with a False condition:\n{}", dir.display(), problems.join("\n"));
        let conflicted: Vec<String> = translation
            .statuses
            .iter()
            .filter(|s| s.condition("Conflicted").is_some())
            .map(|s| s.object.to_string())
            .collect();
        assert!(conflicted.is_empty(), "{}: conflicts: {conflicted:?}", dir.display());
        assert!(!translation.snapshot.routes.is_empty(), "{}: no routes compiled", dir.display());
        // A standalone proxy serving an example connects to loopback only.
        for route in &translation.snapshot.routes {
            if let snapshot::Backend::Upstreams { groups } = &route.backend {
                for endpoint in groups.iter().flat_map(|g| &g.endpoints) {
                    let loopback = endpoint.starts_with("127.")
                        || endpoint.starts_with("[::1]:")
                        || endpoint.starts_with("localhost:");
                    assert!(loopback, "{}: {} sends traffic to {endpoint}", dir.display(), route.id);
                }
            }
        }
        // Every ApiRoute and Ingress of the folder is served.
        for route in &inputs.routes {
            let id = format!(
                "{}/{}",
                route.metadata.namespace.as_deref().unwrap_or_default(),
                route.metadata.name.as_deref().unwrap_or_default()
            );
            assert!(translation.snapshot.route(&id).is_some(), "{}: {id} not served", dir.display());
        }
    }
}
