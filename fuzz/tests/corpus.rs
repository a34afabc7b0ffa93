//! Every checked-in input of every target, run once through its harness as a plain test:
//! the seed corpus (`corpus/TARGET/`) and the crash regressions (`regressions/TARGET/`).
//! `scripts/fuzz.sh --replay` does the same with the instrumented builds.

use std::fs;
use std::path::Path;

fn replay(dir: &Path, run: fn(&[u8])) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            p.is_file() && !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    paths.sort();
    for path in &paths {
        let data = fs::read(path).expect("a checked-in input is readable");
        println!("{}", path.display());
        run(&data);
    }
    paths.len()
}

#[test]
fn every_seed_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, run) in fuzz::TARGETS {
        let seeds = replay(&root.join("corpus").join(target), run);
        assert!(seeds > 0, "target {target} has a seed corpus");
        replay(&root.join("regressions").join(target), run);
    }
}
