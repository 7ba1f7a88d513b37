//! The Kubernetes files agree with the binary they run: every `ember serve` / `ember gateway`
//! container's arguments parse with Ember's own command line, the grace period outlasts the
//! drain timeout, probes hit the paths and port the server listens on, the pods run non-root on
//! a read-only root filesystem with the writable paths mounted, and KEDA watches the queues the
//! worker consumes. (Schemas are checked by `.ci/manifests.py`.)

use clap::Parser;
use ember::cli::{Cli, Command};
use ember::protocol::Lane;
use ember::telemetry::{LIVENESS_PATH, READINESS_PATH};
use ember::transport::queues;
use serde::Deserialize;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// Every object in the YAML files under `manifests/` and `keda/` (kustomizations aside).
fn objects() -> Vec<(PathBuf, Value)> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                found.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("manifests"), &mut files);
    walk(&root.join("keda"), &mut files);
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap();
            if !value.is_null() {
                objects.push((path.clone(), value));
            }
        }
    }
    objects
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap()
}

/// The pod spec of a Deployment or a ScaledJob.
fn pod_spec(object: &Value) -> Option<&Value> {
    match kind(object) {
        "Deployment" | "Job" => Some(&object["spec"]["template"]["spec"]),
        "ScaledJob" => Some(&object["spec"]["jobTargetRef"]["template"]["spec"]),
        _ => None,
    }
}

fn args(container: &Value) -> Vec<String> {
    let args = container["args"]
        .as_sequence()
        .expect("containers run ember with args");
    args.iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn parse(args: &[String]) -> Command {
    let argv = std::iter::once("ember".to_owned()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) => panic!("{args:?} is not a valid ember command line: {e}"),
    }
}

fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("port {other:?}"),
    }
}

/// (path, port) of a container's HTTP probe.
fn probe(container: &Value, which: &str) -> Option<(String, u64)> {
    let get = &container[which]["httpGet"];
    let path = get["path"].as_str()?.to_owned();
    Some((path, container_port(container, &get["port"])))
}

fn assert_hardened(what: &str, pod: &Value, container: &Value) {
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{what}: runAsNonRoot"
    );
    let security = &container["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{what}: read-only root"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{what}: escalation"
    );
    let dropped = security["capabilities"]["drop"].as_sequence();
    assert!(
        dropped.is_some_and(|d| d.iter().any(|c| c.as_str() == Some("ALL"))),
        "{what}: capabilities"
    );
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .map(|m| m.iter().filter_map(|v| v["mountPath"].as_str()).collect())
        .unwrap_or_default();
    assert!(mounts.contains(&"/tmp"), "{what}: /tmp must be writable");
    let cache = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some("EMBER_CACHE_DIR"))
        .and_then(|e| e["value"].as_str());
    if let Some(cache) = cache {
        assert!(
            mounts.iter().any(|m| cache.starts_with(m)),
            "{what}: cache {cache} not mounted"
        );
    }
}

#[test]
fn workers_drain_within_their_grace_period_and_probe_the_served_paths() {
    let mut workers = 0;
    for (path, object) in objects() {
        let Some(pod) = pod_spec(&object) else {
            continue;
        };
        let what = format!("{} {} ({})", kind(&object), name(&object), path.display());
        for container in pod["containers"].as_sequence().unwrap() {
            let Command::Serve(serve) = parse(&args(container)) else {
                continue;
            };
            workers += 1;
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace period set");
            // The drain, then closing the connection, before Kubernetes sends SIGKILL.
            assert!(
                grace >= serve.drain_timeout.as_secs() + 10,
                "{what}: grace period {grace} s does not outlast --drain-timeout {:?}",
                serve.drain_timeout
            );
            let port = u64::from(serve.metrics_addr.port());
            assert_eq!(
                probe(container, "livenessProbe"),
                Some((LIVENESS_PATH.to_owned(), port)),
                "{what}"
            );
            if kind(&object) == "Deployment" {
                assert_eq!(
                    probe(container, "readinessProbe"),
                    Some((READINESS_PATH.to_owned(), port)),
                    "{what}"
                );
            } else {
                assert!(
                    serve.exit_when_idle.is_some(),
                    "{what}: a Job's worker must end when idle"
                );
            }
            assert_hardened(&what, pod, container);
        }
    }
    assert!(workers >= 2, "a worker Deployment and a batch ScaledJob");
}

#[test]
fn the_gateway_probes_its_v2_health_routes() {
    let mut gateways = 0;
    for (_, object) in objects() {
        let Some(pod) = pod_spec(&object) else {
            continue;
        };
        for container in pod["containers"].as_sequence().unwrap() {
            let Command::Gateway(gateway) = parse(&args(container)) else {
                continue;
            };
            gateways += 1;
            let port = u64::from(gateway.listen.port());
            assert_eq!(
                probe(container, "livenessProbe"),
                Some(("/v2/health/live".to_owned(), port))
            );
            assert_eq!(
                probe(container, "readinessProbe"),
                Some(("/v2/health/ready".to_owned(), port))
            );
            assert_hardened(name(&object), pod, container);
        }
    }
    assert_eq!(gateways, 1);
}

/// The parsed command lines of the containers of every `kind` object.
fn commands<'a>(
    objects: &'a [(PathBuf, Value)],
    kind_: &'a str,
) -> impl Iterator<Item = Command> + 'a {
    objects
        .iter()
        .filter(move |(_, object)| kind(object) == kind_)
        .flat_map(|(_, object)| {
            pod_spec(object).unwrap()["containers"]
                .as_sequence()
                .unwrap()
        })
        .map(|container| parse(&args(container)))
}

#[test]
fn the_queue_declaring_job_declares_every_served_model() {
    let objects = objects();
    let names = |models: &[ember::store::ModelName]| {
        models.iter().map(|m| m.to_string()).collect::<Vec<_>>()
    };
    let served: std::collections::BTreeSet<String> = commands(&objects, "Deployment")
        .filter_map(|command| match command {
            Command::Serve(serve) => Some(names(&serve.models)),
            _ => None,
        })
        .flatten()
        .collect();
    let declared: std::collections::BTreeSet<String> = commands(&objects, "Job")
        .filter_map(|command| match command {
            Command::Queues {
                command: ember::cli::QueuesCommand::Declare { models, .. },
            } => Some(names(&models)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!served.is_empty());
    assert_eq!(
        served, declared,
        "KEDA and the gateway need every served model's queues before a worker runs"
    );
    for (_, object) in &objects {
        if kind(object) == "Job" {
            let pod = pod_spec(object).unwrap();
            assert_hardened(name(object), pod, &pod["containers"][0]);
        }
    }
}

#[test]
fn keda_scales_each_worker_on_the_queues_it_consumes() {
    let objects = objects();
    let mut models = std::collections::HashMap::new();
    for (_, object) in &objects {
        let Some(pod) = pod_spec(object) else {
            continue;
        };
        for container in pod["containers"].as_sequence().unwrap() {
            if let Command::Serve(serve) = parse(&args(container)) {
                models.insert(
                    name(object).to_owned(),
                    serve
                        .models
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    let mut checked = 0;
    for (path, object) in &objects {
        if !matches!(kind(object), "ScaledObject" | "ScaledJob") {
            continue;
        }
        let serving = match kind(object) {
            "ScaledObject" => &models[object["spec"]["scaleTargetRef"]["name"].as_str().unwrap()],
            _ => &models[name(object)],
        };
        assert_eq!(
            object["spec"]["minReplicaCount"].as_u64().unwrap_or(0),
            0,
            "scale to zero"
        );
        for trigger in object["spec"]["triggers"].as_sequence().unwrap() {
            // The workers' own answer rate: of the models they serve.
            if trigger["type"].as_str() == Some("prometheus") {
                let query = trigger["metadata"]["query"].as_str().unwrap();
                assert!(
                    query.contains("ember_requests_total")
                        && serving
                            .iter()
                            .any(|m| query.contains(&format!("model=\"{m}\""))),
                    "{}: {query} does not count {serving:?}'s answers",
                    path.display()
                );
                checked += 1;
                continue;
            }
            // Both brokers name queues alike: `ember.<model>.<lane>`.
            let queue = match trigger["type"].as_str().unwrap() {
                "rabbitmq" | "azure-servicebus" => trigger["metadata"]["queueName"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                other => panic!("{}: trigger type {other}", path.display()),
            };
            let consumed: Vec<String> = serving
                .iter()
                .flat_map(|model| {
                    [Lane::Realtime, Lane::Batch].map(|lane| queues::requests(model, lane))
                })
                .collect();
            assert!(
                consumed.contains(&queue),
                "{}: {queue} is not one of {consumed:?}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} triggers");
}

#[test]
fn the_image_builds_from_what_it_copies_with_the_ci_build_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    // What cargo reads to build any target: the manifests, every workspace member, and the
    // files of every target the manifest declares (cargo checks they exist).
    let manifest: toml_like::Manifest = toml_like::read(&root.join("Cargo.toml"));
    let mut needed = vec![".cargo", "Cargo.toml", "Cargo.lock", "build.rs", "src"];
    needed.extend(
        manifest
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "."),
    );
    needed.extend(manifest.declares_tests.then_some("tests"));
    needed.extend(manifest.declares_benches.then_some("benches"));
    for needed in needed {
        assert!(copied.contains(&needed), "the image build lacks {needed}");
    }
    for source in &copied {
        assert!(
            root.join(source).exists(),
            "the Dockerfile copies {source}, which is not here"
        );
    }
    // Every file the code embeds is in the build context the Dockerfile copies.
    fn embedded(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                embedded(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                    for (at, _) in text.match_indices(macro_name) {
                        let rest = &text[at + macro_name.len()..];
                        let target = &rest[..rest.find('"').unwrap()];
                        found.push(path.parent().unwrap().join(target));
                    }
                }
            }
        }
    }
    let mut files = Vec::new();
    embedded(&root.join("src"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let file = file.canonicalize().unwrap();
        let relative = file.strip_prefix(root.canonicalize().unwrap()).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            copied.contains(&top),
            "src embeds {}, which the image build lacks",
            relative.display()
        );
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    for build in [
        "cargo build --release --locked --bin ember",
        "cargo build --release --locked --bin ember --features cuda",
    ] {
        assert!(dockerfile.contains(build), "the Dockerfile lacks {build}");
        assert!(
            ci.contains(build),
            "CI does not build what the image ships: {build}"
        );
    }
    // Both final images: non-root, ember as the entrypoint.
    assert_eq!(dockerfile.matches("\nUSER 65532:65532\n").count(), 2);
    assert_eq!(
        dockerfile
            .matches("\nENTRYPOINT [\"/usr/local/bin/ember\"]\n")
            .count(),
        2
    );
}

/// The little of the root Cargo.toml the image test needs.
mod toml_like {
    /// Workspace members and whether test and bench targets are declared.
    pub struct Manifest {
        pub members: Vec<String>,
        pub declares_tests: bool,
        pub declares_benches: bool,
    }

    pub fn read(path: &std::path::Path) -> Manifest {
        let text = std::fs::read_to_string(path).unwrap();
        let members = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("members = ["))
            .expect("a workspace members list on one line")
            .trim_end_matches(']')
            .split(',')
            .map(|m| m.trim().trim_matches('"').to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        Manifest {
            members,
            declares_tests: text.lines().any(|l| l.trim() == "[[test]]"),
            declares_benches: text.lines().any(|l| l.trim() == "[[bench]]"),
        }
    }
}
