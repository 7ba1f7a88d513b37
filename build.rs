//! Records the commit the binary is built from (`EMBER_GIT_COMMIT` given to the build, as an image
//! build without `.git` does, else `git rev-parse HEAD`), for the manifests `ember train` writes.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EMBER_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("EMBER_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    if let Some(commit) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=EMBER_GIT_COMMIT={commit}");
    }
}
