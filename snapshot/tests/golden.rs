//! Golden files: `tests/golden/NAME.in.yaml` (objects, as a user would
//! `kubectl apply` them) -> `tests/golden/NAME.out.yaml` (the translation:
//! snapshot and statuses). Each pair pins one named behaviour.
//!
//! Regenerate after an intended change with
//! `UPDATE_GOLDEN=1 cargo nextest run -p snapshot --test golden`
//! and read the diff before committing it.

use std::path::{Path, PathBuf};

use snapshot::{Inputs, translate};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Renders the translation of one input file, with a reversed-input run
/// checked to give the same bytes.
fn render(input: &Path) -> String {
    let text = std::fs::read_to_string(input).expect("read input");
    let mut inputs = Inputs::default();
    inputs.load_yaml(&input.display().to_string(), &text).expect("input parses");
    let translation = translate(&inputs);

    let mut reversed = inputs.clone();
    reversed.tenants.reverse();
    reversed.routes.reverse();
    reversed.subscriptions.reverse();
    reversed.providers.reverse();
    reversed.ingresses.reverse();
    reversed.services.reverse();
    reversed.endpoint_slices.reverse();
    reversed.secrets.reverse();
    reversed.config_maps.reverse();
    assert_eq!(translate(&reversed), translation, "{}: input order changed the result", input.display());

    serde_yaml::to_string(&translation).expect("serialize")
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 25, "expected at least 25 golden cases, found {}", inputs.len());

    let mut failures = Vec::new();
    for input in &inputs {
        let expected_path = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        let actual = render(input);
        if update {
            std::fs::write(&expected_path, &actual).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: output differs from {}\n{}",
                input.display(),
                expected_path.display(),
                first_difference(&expected, &actual)
            )),
            Err(_) => failures.push(format!("{}: missing {}", input.display(), expected_path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended, run: UPDATE_GOLDEN=1 cargo nextest run -p snapshot --test golden",
        failures.join("\n\n")
    );
}

fn first_difference(expected: &str, actual: &str) -> String {
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1);
        }
    }
    format!("lengths differ: expected {} lines, actual {} lines", expected.lines().count(), actual.lines().count())
}
