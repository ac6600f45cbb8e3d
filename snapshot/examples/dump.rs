//! Prints the translation of YAML files (for reading, not for tests):
//! `cargo run -p snapshot --example dump -- examples/platform/*.yaml`

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut inputs = snapshot::Inputs::default();
    for path in std::env::args().skip(1) {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{path}: {err}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(err) = inputs.load_yaml(&path, &text) {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    }
    match serde_yaml::to_string(&snapshot::translate(&inputs)) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
