//! SIGKILL at random points while a child process writes a blob: no blob ever reads as complete
//! unless it was finished, every recorded chunk is intact, resume continues, and the final blob is
//! right. The test binary re-executes itself as the child (`harness = false`).
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use preheat_core::Digest;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const CHILD_DIR: &str = "PREHEAT_STORE_CRASH_DIR";
const CHILD_MODE: &str = "PREHEAT_STORE_CRASH_MODE";

fn blob() -> Vec<u8> {
    data(40 * CS as usize + 777, 42)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let mode = std::env::var(CHILD_MODE).unwrap();
        rt.block_on(child(Path::new(&dir), &mode));
    } else {
        rt.block_on(parent());
        println!("crash test: ok");
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Writes the blob (resuming), reporting the bytes stored after every step.
async fn child(dir: &Path, mode: &str) {
    let store = open(dir).await;
    let blob = blob();
    let ix = index_of(&blob);
    let mut w = store.writer(ix.blob, blob.len() as u64).await.unwrap();
    let mut rng = rand::rngs::StdRng::from_entropy();
    if mode == "chunks" {
        let mut order: Vec<u32> = (0..ix.layout.count())
            .filter(|i| !w.done()[*i as usize])
            .collect();
        order.shuffle(&mut rng);
        for i in order {
            w.write_chunk(i, chunk(&blob, i), &ix.hashes[i as usize])
                .await
                .unwrap();
            say(&format!("stored {}", w.bytes_done()));
        }
    } else {
        let mut off = w.resume_offset() as usize;
        while off < blob.len() {
            let n = rng.gen_range(1..150_000).min(blob.len() - off);
            w.write(&blob[off..off + n]).await.unwrap();
            off += n;
            say(&format!("stored {}", w.bytes_done()));
        }
    }
    say("finishing");
    w.finish().await.unwrap();
    say("finished");
}

/// Runs the child; kills it after `kill_after` lines (never if `None`). Returns the last reported
/// byte count and whether it said "finished".
fn run_child(dir: &Path, mode: &str, kill_after: Option<usize>, rng: &mut impl Rng) -> (u64, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (mut reported, mut finished) = (0, false);
    for (n, line) in BufReader::new(stdout).lines().enumerate() {
        let line = line.unwrap();
        if let Some(b) = line.strip_prefix("stored ") {
            reported = b.parse().unwrap();
        }
        finished |= line == "finished";
        if kill_after.is_some_and(|k| n + 1 >= k) {
            // Land somewhere inside the next write, fsync or rename.
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "child failed: {status}");
    }
    (reported, finished)
}

async fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let blob = blob();
    let d = Digest::of(&blob);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut killed_partial = 0;
    for round in 0..12 {
        let mode = if round % 2 == 0 { "seq" } else { "chunks" };
        // Mostly early kills; sometimes late enough to land in `finish`.
        let kill_after = if round > 0 && rng.gen_bool(0.25) {
            rng.gen_range(1..60)
        } else {
            rng.gen_range(1..12)
        };
        let (reported, finished) = run_child(dir.path(), mode, Some(kill_after), &mut rng);

        let store = open(dir.path()).await;
        let kept = store.partial(&d).await.unwrap().map(|p| p.bytes_done);
        println!("round {round} ({mode}): killed after {kill_after} lines, {reported} reported, kept {kept:?}");
        if store.contains(&d).await {
            // Complete means right: only a finished write may get here.
            let mut got = Vec::new();
            let mut f = store.open_blob(&d).await.unwrap();
            tokio::io::AsyncReadExt::read_to_end(&mut f, &mut got)
                .await
                .unwrap();
            assert!(
                got == blob,
                "round {round}: complete blob has wrong content"
            );
            assert_eq!(store.chunk_index(&d).await.unwrap(), Some(index_of(&blob)));
            break;
        }
        assert!(
            !finished,
            "round {round}: child finished but the blob is not complete"
        );
        assert!(!dir.path().join("blobs/sha256").join(d.hex()).exists());
        let Some(info) = store.partial(&d).await.unwrap() else {
            assert_eq!(reported, 0, "round {round}: stored chunks vanished");
            continue;
        };
        killed_partial += 1;
        assert!(
            info.bytes_done >= reported,
            "round {round}: {} bytes kept, {reported} were reported stored",
            info.bytes_done
        );
        for (i, done) in info.done.iter().enumerate() {
            if *done {
                let i = i as u32;
                assert_eq!(&store.read_chunk(&d, i).await.unwrap()[..], chunk(&blob, i));
            }
        }
    }
    assert!(killed_partial > 0, "no round was killed mid-write");

    let store = open(dir.path()).await;
    if !store.contains(&d).await {
        drop(store);
        let (_, finished) = run_child(dir.path(), "seq", None, &mut rng);
        assert!(finished);
    }
    let store = open(dir.path()).await;
    assert!(store.contains(&d).await);
    assert!(store.partial(&d).await.unwrap().is_none());
    let mut got = Vec::new();
    let mut f = store.open_blob(&d).await.unwrap();
    tokio::io::AsyncReadExt::read_to_end(&mut f, &mut got)
        .await
        .unwrap();
    assert_eq!(Digest::of(&got), d);
}
