//! Replays every committed input of every fuzz target (`fuzz/seeds/<target>/`, the seeds,
//! and `fuzz/regressions/<target>/`, each crash found, named after it) through the target, so
//! that `cargo test` keeps them fixed on the stable toolchain. libFuzzer runs are in `fuzz/`.

use std::path::Path;

#[test]
fn every_corpus_and_regression_input_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in atelier_fuzzing::TARGETS {
        let mut n = 0;
        for folder in ["seeds", "regressions"] {
            let dir = root.join(folder).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| target(&data));
                assert!(r.is_ok(), "{name}: {} fails", f.display());
                n += 1;
            }
        }
        assert!(n > 0, "{name}: no seed inputs in fuzz/seeds/{name}");
    }
}
