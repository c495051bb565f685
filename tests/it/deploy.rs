//! The deployment files in `deploy/`: the Kubernetes sidecar example, the systemd unit and
//! the Dockerfile, checked against each other and against the configuration they carry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chunkgate::config::{parse_duration, Config};
use serde::Deserialize;
use serde_yaml::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn pod_documents() -> Vec<Value> {
    let text = read("deploy/kubernetes/pod.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML document"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in pod.yaml"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn sidecar_config(docs: &[Value]) -> Config {
    let cm = kind(docs, "ConfigMap");
    let toml = str_of(&cm["data"]["chunkgate.toml"], "chunkgate.toml");
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-test".to_string());
    let cfg = Config::from_toml_str_with_env(toml, "pod.yaml:chunkgate.toml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    cfg.validate("pod.yaml").expect("complete configuration");
    cfg
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn named_port(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port named {name}"))
}

#[test]
fn pod_sidecar_relations_hold() {
    let docs = pod_documents();
    let cfg = sidecar_config(&docs);
    let pod = kind(&docs, "Pod");
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(
        containers.len(),
        2,
        "an application container and the sidecar"
    );

    let gate = container(pod, "chunkgate");
    let admin = cfg.admin.expect("the sidecar config has an admin listener");
    assert!(
        admin.ip().is_unspecified(),
        "the kubelet probes the pod IP, so admin must listen on all interfaces"
    );

    // Readiness on /readyz and liveness on /healthz, both on the admin port.
    let ready = &gate["readinessProbe"]["httpGet"];
    assert_eq!(str_of(&ready["path"], "readinessProbe path"), "/readyz");
    assert_eq!(named_port(gate, &ready["port"]), u64::from(admin.port()));
    let live = &gate["livenessProbe"]["httpGet"];
    assert_eq!(str_of(&live["path"], "livenessProbe path"), "/healthz");
    assert_eq!(named_port(gate, &live["port"]), u64::from(admin.port()));

    // preStop sleep + drain deadline fit inside the grace period, with margin.
    let pre_stop = &gate["lifecycle"]["preStop"];
    let sleep = pre_stop["sleep"]["seconds"]
        .as_u64()
        .or_else(|| {
            let cmd = pre_stop["exec"]["command"].as_sequence()?;
            cmd.last()?.as_str()?.parse().ok()
        })
        .expect("a preStop sleep");
    assert!(sleep >= 1, "preStop gives endpoints time to update");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let needed = Duration::from_secs(sleep) + cfg.drain_timeout;
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + drain_timeout {:?}",
        cfg.drain_timeout
    );

    // The config file the sidecar is told to read is the one the ConfigMap mounts.
    let args: Vec<&str> = gate["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config in args");
    let mount = gate["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| config_path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .expect("config path is mounted");
    let cm_name = str_of(
        &kind(&docs, "ConfigMap")["metadata"]["name"],
        "configmap name",
    );
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume exists");
    assert_eq!(
        str_of(&volume["configMap"]["name"], "volume configMap"),
        cm_name
    );
    assert!(config_path.ends_with("/chunkgate.toml"));

    // The key comes from a Secret, never inline; the app holds no real key.
    let key_env = gate["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("OPENAI_API_KEY"))
        .expect("OPENAI_API_KEY for ${OPENAI_API_KEY}");
    assert!(
        key_env["value"].is_null(),
        "the key is not written in the manifest"
    );
    assert!(key_env["valueFrom"]["secretKeyRef"]["name"].is_string());

    // The application talks to the sidecar listener through a configured route.
    let app = container(pod, "app");
    let base = app["env"]
        .as_sequence()
        .expect("app env")
        .iter()
        .find(|e| e["name"].as_str() == Some("OPENAI_BASE_URL"))
        .map(|e| str_of(&e["value"], "OPENAI_BASE_URL"))
        .expect("OPENAI_BASE_URL");
    let listener = cfg.listeners[0].addr;
    let rest = base
        .strip_prefix(&format!("http://{listener}"))
        .unwrap_or_else(|| panic!("{base} does not point at the sidecar listener {listener}"));
    assert!(
        cfg.routes.iter().any(|r| rest.starts_with(&r.prefix)),
        "{rest} matches no route"
    );
    assert!(
        listener.ip().is_loopback(),
        "the sidecar listener stays inside the pod"
    );

    // Prometheus annotations point at the admin port.
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(
        str_of(&ann["prometheus.io/port"], "port annotation"),
        admin.port().to_string()
    );
    assert_eq!(
        str_of(&ann["prometheus.io/path"], "path annotation"),
        "/metrics"
    );
}

/// `key=value` lines of one section of a systemd unit (later duplicates kept).
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

fn unit_value<'a>(kv: &'a [(String, String)], key: &str) -> &'a str {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn systemd_unit_stops_after_the_drain() {
    let text = read("deploy/systemd/chunkgate.service");
    let service = unit_section(&text, "Service");
    let exec = unit_value(&service, "ExecStart");
    assert!(exec.contains(" serve --config "), "{exec}");
    let config_path = exec.rsplit(' ').next().unwrap();
    assert_eq!(config_path, "/etc/chunkgate/chunkgate.toml");
    assert_eq!(unit_value(&service, "KillSignal"), "SIGTERM");
    // The unit's TimeoutStopSec must exceed the drain deadline of the configuration it is
    // shipped with (the example file, installed as /etc/chunkgate/chunkgate.toml).
    let env = |_: &str| Some("x".to_string());
    let example = Config::from_file_with_env(&repo("chunkgate.example.toml"), &env).unwrap();
    let stop = parse_duration(unit_value(&service, "TimeoutStopSec")).expect("duration");
    assert!(
        stop > example.drain_timeout,
        "TimeoutStopSec {stop:?} must exceed drain_timeout {:?}",
        example.drain_timeout
    );
    assert!(!unit_section(&text, "Install").is_empty());
}

#[test]
fn systemd_unit_verifies() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("note: systemd-analyze not found; `systemd-analyze verify` was not run");
        return;
    }
    // Verify checks that ExecStart's binary exists: point it at the one cargo built.
    let text = read("deploy/systemd/chunkgate.service")
        .replace("/usr/local/bin/chunkgate", env!("CARGO_BIN_EXE_chunkgate"));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("chunkgate.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("chunkgate.service"))
        .collect();
    assert!(about_unit.is_empty(), "warnings about the unit:\n{stderr}");
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let text = read("deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let build_stage = froms[0]
        .rsplit_once(" AS ")
        .map(|(_, name)| name.trim())
        .expect("the first stage is named");
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last_from..];
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with(&format!("COPY --from={build_stage} "))),
        "the runtime stage copies the binary from the build stage"
    );
    assert!(
        !runtime
            .iter()
            .any(|l| l.starts_with("RUN cargo") || l.contains("cargo build")),
        "no toolchain in the runtime stage"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/chunkgate\"]")));

    // Every file the build copies from the context exists and passes the .dockerignore.
    let ignore = read("deploy/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for line in &lines {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo(src).exists(),
                "COPY source {src} missing from the repository"
            );
            assert!(
                allowed.contains(src),
                "COPY source {src} is excluded by the .dockerignore"
            );
        }
    }

    // The ports exposed are the example's listener and admin ports.
    let env = |_: &str| Some("x".to_string());
    let example = Config::from_file_with_env(&repo("chunkgate.example.toml"), &env).unwrap();
    let expose = runtime
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let ports: Vec<&str> = expose.split_whitespace().collect();
    assert!(ports.contains(&example.listeners[0].addr.port().to_string().as_str()));
    assert!(ports.contains(&example.admin.expect("admin").port().to_string().as_str()));
}
