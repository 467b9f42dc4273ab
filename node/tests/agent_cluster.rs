//! Four real agents on loopback, each given the others with PEERS, converge on an image list that
//! changes at run time; between them the registry serves each layer to fewer than all four.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use std::net::SocketAddr;

use agent_support::{canonical, entry, write_list, Agent, Spec, MIB};
use preheat_testkit::{free_port, ImageBuilder, Registry};

const N: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_agents_converge_when_the_list_changes_at_run_time() {
    let reg = Registry::start().await.unwrap();
    let a = ImageBuilder::new()
        .seed(31)
        .layers(&[2 * MIB, MIB])
        .push(&reg, "cluster/a:1")
        .await
        .unwrap();
    let b = ImageBuilder::new()
        .seed(32)
        .layers(&[2 * MIB])
        .push(&reg, "cluster/b:1")
        .await
        .unwrap();
    let (ca, cb) = (canonical(&a.reference), canonical(&b.reference));
    let dir = tempfile::tempdir().unwrap();
    let host = reg.host();
    let ports: Vec<u16> = (0..N).map(|_| free_port().unwrap()).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let mut agents = Vec::new();
    let mut lists = Vec::new();
    for i in 0..N {
        let list = dir.path().join(format!("list-{i}/images.list"));
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        std::fs::write(&list, "# nothing yet\n").unwrap();
        lists.push(list);
    }
    let stores: Vec<_> = (0..N)
        .map(|i| dir.path().join(format!("store-{i}")))
        .collect();
    let names: Vec<String> = (0..N).map(|i| format!("node-{i}")).collect();
    for i in 0..N {
        let mut spec = Spec::new(&names[i], &stores[i], &lists[i], &host);
        spec.swarm_port = ports[i];
        spec.peers = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        agents.push(Agent::start(spec).await);
    }
    for ag in &agents {
        ag.wait_status("connected to the other agents", |s| {
            s["peers"].as_array().is_some_and(|p| p.len() == N - 1)
        })
        .await;
    }

    for list in &lists {
        write_list(list, &format!("{}\n", a.reference));
    }
    for ag in &agents {
        let e = ag.wait_complete(&ca).await;
        assert_eq!(e["digest"], a.manifest_digest.to_string());
    }
    let from_peers: u64 = futures_sum(&agents, &ca, "peerBytes").await;
    let from_registry: u64 = futures_sum(&agents, &ca, "registryBytes").await;
    println!("image a: {from_registry} bytes from the registry, {from_peers} from peers");
    assert!(
        from_registry < N as u64 * a.total_size,
        "not every agent pulled a from the registry ({from_registry} bytes)"
    );

    for list in &lists {
        write_list(list, &format!("{}\n", b.reference));
    }
    for ag in &agents {
        ag.wait_complete(&cb).await;
        let s = ag.status().await;
        assert!(entry(&s, &ca).is_none(), "a is no longer listed: {s}");
    }
    for ag in &mut agents {
        assert_eq!(ag.sigterm().await.code(), Some(0));
    }
}

async fn futures_sum(agents: &[Agent], image: &str, field: &str) -> u64 {
    let mut sum = 0;
    for ag in agents {
        sum += ag.image(image).await.unwrap()[field].as_u64().unwrap();
    }
    sum
}
