//! The `image-preheat` command line against a real docker-registry (Debian's, started by the test):
//! exit codes and messages, log format off a terminal, `images`, and disk full on a small tmpfs.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use preheat_testkit::{ImageBuilder, Registry, TmpfsMount};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_image-preheat");
const MIB: u64 = 1024 * 1024;

async fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("STORE_DIR").kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("image-preheat did not finish within 120 s")
        .expect("image-preheat could not be started")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn images_json(store: &Path) -> serde_json::Value {
    let out = run(&["images", "--json", "--store", &store.to_string_lossy()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("images --json prints JSON")
}

#[tokio::test]
async fn pull_four_layers_then_list() {
    let reg = Registry::start().await.unwrap();
    let sizes = [50 * MIB, 50 * MIB, 50 * MIB, 50 * MIB];
    let img = ImageBuilder::new()
        .seed(7)
        .layers(&sizes)
        .push(&reg, "big/app:1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();

    let out = run(&[
        "pull",
        &img.reference,
        "--store",
        s,
        "--insecure-registry",
        &reg.host(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&img.manifest_digest.to_string()),
        "{stdout}"
    );
    // Off a terminal, progress and logs are JSON lines on stderr.
    let stderr = text(&out.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["message"] == "pull started"),
        "{stderr}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "image pulled"),
        "{stderr}"
    );

    let list = images_json(&store).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["reference"], img.reference);
    assert_eq!(list[0]["digest"], img.manifest_digest.to_string());
    assert_eq!(list[0]["state"], "complete");
    assert_eq!(list[0]["size"], img.total_size);

    // Every stored blob is the blob its name says.
    for (digest, size) in img.blobs() {
        let path = store.join("blobs/sha256").join(digest.hex());
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, size);
        assert_eq!(preheat_core::Digest::of(&data), digest);
    }
}

#[tokio::test]
async fn bad_input_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().to_str().unwrap();
    let out = run(&["pull", "Not A/Ref", "--store", s]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid image reference"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["pull", "nginx", "--store", s, "--platform", "linux"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--platform"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["pull", "nginx", "--store", s, "--chunk-size", "1KiB"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("chunk size"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["frobnicate"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn missing_image_exits_1_naming_it() {
    let reg = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/no/such:image", reg.host());
    let out = run(&[
        "pull",
        &reference,
        "--store",
        dir.path().to_str().unwrap(),
        "--insecure-registry",
        &reg.host(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("manifest unknown") && stderr.contains("no/such:image"),
        "{stderr}"
    );
    assert_eq!(images_json(dir.path()).await, serde_json::json!([]));
}

#[tokio::test]
async fn unreachable_registry_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let port = preheat_testkit::free_port().unwrap();
    let host = format!("127.0.0.1:{port}");
    let out = run(&[
        "pull",
        &format!("{host}/a:b"),
        "--store",
        dir.path().to_str().unwrap(),
        "--insecure-registry",
        &host,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&host), "{}", text(&out.stderr));
}

/// The store fills up mid-layer: a clear error and exit 1, no complete-looking blob of that layer,
/// the finished layer intact; once space is freed the same pull resumes and completes without
/// fetching the stored chunks again. Needs root for the tmpfs mount (CI runs as root).
#[tokio::test]
async fn disk_full_then_resume() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(11)
        .layers(&[6 * MIB, 24 * MIB])
        .push(&reg, "full/app:1")
        .await
        .unwrap();
    let tmpfs = TmpfsMount::new(16 * MIB).expect("mounting a tmpfs needs root");
    let store = tmpfs.path().join("store");
    let s = store.to_str().unwrap();
    let args = [
        "pull",
        &img.reference,
        "--store",
        s,
        "--insecure-registry",
        &reg.host(),
        "--chunk-size",
        "1MiB",
    ];

    let out = run(&args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no space"), "{stderr}");

    let (big, big_size) = img.layers[1];
    assert!(
        !store.join("blobs/sha256").join(big.hex()).exists(),
        "a partial layer reads as complete"
    );
    let list = images_json(&store).await;
    assert_eq!(list[0]["state"], "partial", "{list}");
    let stored = list[0]["storedBytes"].as_u64().unwrap();
    assert!(stored > 6 * MIB && stored < img.total_size, "{list}");

    // Free space (grow the tmpfs) and pull again: it resumes from the stored chunks.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(tmpfs.path())
        .status()
        .unwrap();
    assert!(grown.success());
    let out = run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list = images_json(&store).await;
    assert_eq!(list[0]["state"], "complete", "{list}");
    let data = std::fs::read(store.join("blobs/sha256").join(big.hex())).unwrap();
    assert_eq!(data.len() as u64, big_size);
    assert_eq!(preheat_core::Digest::of(&data), big);
    // The second pull fetched only what was missing: its ranged GET started past the stored chunks.
    let served: u64 = reg
        .wait_access_log(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|e| e.blob_digest() == Some(big) && e.status == 206)
                .count()
                == 1
        })
        .await
        .unwrap()
        .iter()
        .filter(|e| e.blob_digest() == Some(big) && e.status == 206)
        .map(|e| e.bytes)
        .sum();
    assert!(
        served < big_size,
        "resumed GET served {served} of {big_size} bytes"
    );
}
