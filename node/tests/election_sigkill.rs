//! Issue 4, item 10: the Lease holder SIGKILLed mid-pull. Four real `image-preheat agent`
//! processes with `LEASE=kube` and `K8S_LOCK_TIMEOUT=6s` race for one 16 MiB image; once half of
//! it has left the registry, the agent holding the image's Lease is killed with SIGKILL (no
//! handover: its Lease must expire). Another agent takes the Lease over within the lease duration
//! plus a few seconds, every surviving agent completes the image, and the registry sends less
//! than 1.5× the image in total.
//!
//! The registry is a real Debian docker-registry behind a `CountingProxy` that paces it to
//! 2 MiB/s, so the pull takes about 8 s and "half" is a moment the test can act in. The
//! Kubernetes API is NOT a real API server (none can run here): it is
//! `preheat_testkit::kube_api::KubeApi`, an in-test HTTP server implementing the Lease REST
//! subset with real semantics (resourceVersion moving on every write, 409 on a stale replace or
//! an existing create, 404, delete preconditions). The agents reach it through a kubeconfig
//! (`KUBECONFIG`), as they would a real cluster outside a pod. Waits are bounded; the one timed
//! assertion is the takeover bound the issue specifies.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod agent_support;

use std::net::SocketAddr;
use std::time::Duration;

use agent_support::{canonical, Agent, Spec, BOUND, MIB};
use preheat_core::election::lease_name;
use preheat_testkit::kube_api::KubeApi;
use preheat_testkit::{free_port, CountingProxy, ImageBuilder, Registry};
use tokio::time::Instant;

const N: usize = 4;
const NS: &str = "preheat";
/// `K8S_LOCK_TIMEOUT` of the agents.
const LOCK: Duration = Duration::from_secs(6);
/// "A few seconds" past the lease duration: the 2 s clock-skew margin every reader adds, the
/// contender's re-read and its replace.
const TAKEOVER_SLACK: Duration = Duration::from_secs(5);
const RATE: u64 = 2 * MIB;

/// A kubeconfig for `server` with `NS` as the default namespace and no credentials.
fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {NS}\n\
         current-context: test\nusers:\n- name: test\n  user: {{}}\n"
    )
}

/// The Lease's holder, if the Lease exists and names one.
fn holder(api: &KubeApi, name: &str) -> Option<String> {
    api.lease(NS, name)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_sigkilled_mid_pull_another_agent_takes_over() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(41)
        .layers(&[4 * MIB, 4 * MIB, 4 * MIB, 4 * MIB])
        .push(&reg, "kill/app:v1")
        .await
        .unwrap();
    let proxy = CountingProxy::start(reg.addr()).await.unwrap();
    proxy.set_rate(Some(RATE));
    let reference = img.reference_via(&proxy.host());
    let image = canonical(&reference);
    let total = img.total_size;
    let lease = lease_name(&img.manifest_digest);

    let api = KubeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&api.url())).unwrap();
    let host = proxy.host();
    let ports: Vec<u16> = (0..N).map(|_| free_port().unwrap()).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let names: Vec<String> = (0..N).map(|i| format!("node-{i}")).collect();
    let stores: Vec<_> = (0..N)
        .map(|i| dir.path().join(format!("store-{i}")))
        .collect();
    let lists: Vec<_> = (0..N)
        .map(|i| dir.path().join(format!("images-{i}.list")))
        .collect();
    for list in &lists {
        std::fs::write(list, "# nothing yet\n").unwrap();
    }
    let mut agents = Vec::new();
    for i in 0..N {
        let mut spec = Spec::new(&names[i], &stores[i], &lists[i], &host);
        spec.swarm_port = ports[i];
        spec.peers = (0..N).filter(|j| *j != i).map(|j| addrs[j]).collect();
        spec.env = vec![
            ("LEASE", "kube".to_owned()),
            ("K8S_NAMESPACE", NS.to_owned()),
            ("K8S_LOCK_TIMEOUT", "6s".to_owned()),
            ("KUBECONFIG", kc.display().to_string()),
        ];
        agents.push(Agent::start(spec).await);
    }
    for ag in &agents {
        ag.wait_status("connected to the other agents", |s| {
            s["peers"].as_array().is_some_and(|p| p.len() == N - 1)
        })
        .await;
    }

    for list in &lists {
        std::fs::write(list, format!("{reference}\n")).unwrap();
    }
    let until = Instant::now() + BOUND;
    while proxy.bytes_to_client() < total / 2 {
        assert!(Instant::now() < until, "the pull never got halfway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead_name = holder(&api, &lease).expect("nobody holds the Lease halfway through the pull");
    let dead = names.iter().position(|n| *n == dead_name).unwrap();
    let mut child = agents[dead].child.take().unwrap();
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let killed_at = Instant::now();
    child.wait().await.unwrap();
    let sent_at_kill = proxy.bytes_to_client();
    assert!(
        sent_at_kill < total,
        "the image had left the registry before the kill"
    );

    // Another agent replaces the expired Lease.
    let new_holder = loop {
        match holder(&api, &lease) {
            Some(h) if h != dead_name => break h,
            _ => {}
        }
        assert!(
            killed_at.elapsed() < LOCK + TAKEOVER_SLACK,
            "no takeover within {:?} of the kill",
            LOCK + TAKEOVER_SLACK
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let takeover = killed_at.elapsed();

    for (i, ag) in agents.iter().enumerate().filter(|(i, _)| *i != dead) {
        let e = ag.wait_complete(&image).await;
        assert_eq!(e["digest"], img.manifest_digest.to_string(), "{}", names[i]);
    }
    let sent = proxy.bytes_to_client();
    let blob_log: u64 = img
        .blobs()
        .iter()
        .map(|(d, _)| reg.blob_bytes_served(d).unwrap())
        .sum();
    eprintln!(
        "image {total} bytes; killed {dead_name} after {sent_at_kill} bytes; {new_holder} took \
         over after {takeover:?}; the registry sent {sent} bytes through the proxy \
         ({blob_log} blob bytes in its log)"
    );
    // Everything that reached the agents (blobs, manifests, headers) stays below 1.5× the image.
    assert!(
        sent * 2 < total * 3,
        "registry sent {sent} bytes for a {total}-byte image"
    );
    for (i, ag) in agents.iter_mut().enumerate() {
        if i != dead {
            assert_eq!(ag.sigterm().await.code(), Some(0), "{}", names[i]);
        }
    }
    // The new holder deleted the Lease once the image was complete.
    assert!(api.lease_names(NS).is_empty(), "{:?}", api.lease_names(NS));
}
