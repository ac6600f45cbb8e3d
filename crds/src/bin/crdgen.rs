//! Writes one YAML file per Sluice CRD into a folder
//! (default `charts/sluice/crds/` at the workspace root).
//!
//! Usage: `cargo run -p crds --bin crdgen [-- OUT_DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/crds"));
    if let Err(err) = std::fs::create_dir_all(&out) {
        eprintln!("crdgen: cannot create {}: {err}", out.display());
        return ExitCode::FAILURE;
    }
    // A kind that no longer exists takes its file with it.
    let stems: Vec<String> = crds::all_crds().into_iter().map(|(stem, _)| stem.to_string()).collect();
    if let Ok(entries) = std::fs::read_dir(&out) {
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let stale = path.extension().is_some_and(|e| e == "yaml")
                && path.file_stem().is_some_and(|s| !stems.iter().any(|k| s.to_string_lossy() == *k));
            if stale {
                match std::fs::remove_file(&path) {
                    Ok(()) => println!("removed {}", path.display()),
                    Err(err) => {
                        eprintln!("crdgen: cannot remove {}: {err}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    for (stem, crd) in crds::all_crds() {
        let path = out.join(format!("{stem}.yaml"));
        let yaml = match crds::render_crd(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: cannot render {stem}: {err}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(err) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
