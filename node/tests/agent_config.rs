//! `image-preheat agent` configuration: a bad value from an environment variable exits 64 naming
//! the variable and what it expects; the same bad value as a flag is a usage error (2); a missing
//! NODE_NAME is a configuration error; every flag's env twin shows in --help. Nothing is bound.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use std::process::Output;

use agent_support::{command, BOUND};

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(BOUND, cmd.output())
        .await
        .expect("image-preheat did not finish")
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn bad_environment_values_exit_64_naming_the_variable() {
    let cases = [
        ("INTERVAL", "soon", "duration"),
        ("PULLING_TIMEOUT", "0s", "positive"),
        ("PREHEAT_CONCURRENCY", "0", "PREHEAT_CONCURRENCY"),
        (
            "DOWNLOAD_API_CONCURRENCY",
            "many",
            "DOWNLOAD_API_CONCURRENCY",
        ),
        ("DOWNLOAD_RATE_LIMIT", "fast", "rate like"),
        ("UPLOAD_RATE_LIMIT", "-1", "rate like"),
        ("STORE_MAX_BYTES", "lots", "size like"),
        ("HTTP_ADDR", "localhost", "HTTP_ADDR"),
        ("SWARM_ADDR", "nowhere:1", "SWARM_ADDR"),
        ("PEERS", "not a peer", "peer address"),
        ("PEERS_DNS", "bad name!", "DNS name"),
        ("PEER_DISCOVERY_INTERVAL", "x", "duration"),
        ("UPLOAD_WAIT", "20s", "half the chunk timeout"),
        ("RESEND_AFTER", "later", "duration"),
        ("PEER_METRICS_LABEL", "maybe", "expected one of true, false"),
        ("K8S_LOCK_TIMEOUT", "forever", "duration"),
        (
            "RUNTIME",
            "podman",
            "expected one of auto, docker, containerd, none",
        ),
        ("LEASE", "etcd", "expected one of kube, none"),
        ("NODE_NAME", "", "NODE_NAME"),
        ("MIRROR_ADDR", "localhost", "MIRROR_ADDR"),
        ("MIRROR_ENABLED", "maybe", "MIRROR_ENABLED"),
        ("MIRROR_RESOLVE_TIMEOUT", "0s", "MIRROR_RESOLVE_TIMEOUT"),
        (
            "MIRROR_DEFAULT_REGISTRY",
            "Not A Host",
            "MIRROR_DEFAULT_REGISTRY",
        ),
    ];
    for (var, value, expected) in cases {
        let mut env = vec![("NODE_NAME", "node-a"), ("HTTP_ADDR", "127.0.0.1:1")];
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        let out = run(&["agent"], &env).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{var}={value:?}: {err}");
        assert!(err.contains(var), "{var}: message names it: {err}");
        assert!(err.contains(expected), "{var}: says {expected:?}: {err}");
    }
}

#[tokio::test]
async fn missing_node_name_is_a_configuration_error() {
    let out = run(&["agent"], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("NODE_NAME is required"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_command_line_values_are_usage_errors() {
    for args in [
        ["--interval", "soon"],
        ["--runtime", "podman"],
        ["--preheat-concurrency", "0"],
    ] {
        let mut all = vec!["agent", "--node-name", "a"];
        all.extend_from_slice(&args);
        // The flag wins over a valid env value: still a command-line error.
        let out = run(&all, &[("INTERVAL", "1m")]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(args[0]), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn help_lists_every_variable_with_its_default() {
    let out = run(&["agent", "--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "NODE_NAME",
        "K8S_NAMESPACE",
        "K8S_LOCK_TIMEOUT",
        "IMAGE_LIST_PATH",
        "PREHEAT_CONCURRENCY",
        "DOWNLOAD_API_CONCURRENCY",
        "INTERVAL",
        "PULLING_TIMEOUT",
        "MOUNT_DIR",
        "DOWNLOAD_RATE_LIMIT",
        "PEER_DISCOVERY_INTERVAL",
        "STORE_DIR",
        "STORE_MAX_BYTES",
        "HTTP_ADDR",
        "SWARM_ADDR",
        "PEERS_DNS",
        "PEERS",
        "UPLOAD_RATE_LIMIT",
        "UPLOAD_WAIT",
        "RESEND_AFTER",
        "LEASE",
        "INSECURE_REGISTRIES",
        "RUNTIME",
        "DOCKER_HOST",
        "CONTAINERD_ADDRESS",
        "CONTAINERD_NAMESPACE",
        "DOCKER_CONFIG",
    ] {
        assert!(help.contains(&format!("[env: {var}")), "{var} in --help");
    }
    for default in [
        "[default: /etc/preheater/images.list]",
        "[default: 1m]",
        "[default: 5m]",
        "[default: 500MiB]",
        "[default: 30s]",
        "[default: 0.0.0.0:8080]",
        "[default: k8s.io]",
        "[default: /var/lib/image-preheat]",
        "64 bad value from an environment variable",
    ] {
        assert!(help.contains(default), "{default} in --help:\n{help}");
    }
}
