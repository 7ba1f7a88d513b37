//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! checks: the short, stable-toolchain run of what `cargo fuzz run <target>` explores at length
//! (docs/reliability.md says how, and how long it ran).

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        replayed += 1;
    }
    assert!(replayed >= 10, "{target}: only {replayed} corpus inputs");
}

#[test]
fn request_corpus_holds() {
    replay("request", targets::request);
}

#[test]
fn binary_request_corpus_holds() {
    replay("binary_request", targets::binary_request);
}

#[test]
fn manifest_corpus_holds() {
    replay("manifest", targets::manifest);
}

#[test]
fn names_corpus_holds() {
    replay("names", targets::names);
}

#[test]
fn amqp_headers_corpus_holds() {
    replay("amqp_headers", targets::amqp_headers);
}
