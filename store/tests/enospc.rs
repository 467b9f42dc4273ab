//! Disk full on a small tmpfs: a clear error, nothing complete-looking, the partial consistent and
//! the store usable afterwards. Needs root (to mount the tmpfs); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use preheat_core::Digest;
use preheat_store::{Store, StoreError};

/// A tmpfs mounted for the test; unmounted on drop, even when the test fails.
struct Tmpfs {
    dir: PathBuf,
    _base: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the disk-full test mounts a tmpfs and must run as root"
        );
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs failed: {st}");
        Self { dir, _base: base }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[tokio::test]
async fn disk_full_is_a_clear_error_and_leaves_a_usable_store() {
    let fs = Tmpfs::mount("8m");
    let dir = fs.path().join("store");
    let store = open(&dir).await;

    // A swarm-mode writer created while there is room.
    let other = data(2 << 20, 301);
    let ix = index_of(&other);
    let mut w2 = store.writer(ix.blob, other.len() as u64).await.unwrap();

    // Sequential: 12 MiB cannot fit in 8 MiB.
    let big = data(12 << 20, 300);
    let d = Digest::of(&big);
    let mut w = store.writer(d, big.len() as u64).await.unwrap();
    let mut err = None;
    for piece in big.chunks(100_000) {
        if let Err(e) = w.write(piece).await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writing 12 MiB to an 8 MiB tmpfs must fail");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");
    assert_eq!(err.kind(), "no_space");
    let stored = w.bytes_done();
    assert!(stored > 0 && stored < big.len() as u64);
    assert!(matches!(
        w.finish().await,
        Err(StoreError::Incomplete { .. })
    ));
    assert!(!store.contains(&d).await);
    assert!(!dir.join("blobs/sha256").join(d.hex()).exists());

    // Swarm mode hits the same wall, cleanly.
    let mut err = None;
    for i in 0..ix.layout.count() {
        if let Err(e) = w2
            .write_chunk(i, chunk(&other, i), &ix.hashes[i as usize])
            .await
        {
            assert!(!w2.done()[i as usize]);
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the tmpfs should already be full");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");
    drop(w2);

    // After a restart the partial holds exactly the chunks that were recorded, all intact.
    drop(store);
    let store = open(&dir).await;
    let info = store.partial(&d).await.unwrap().unwrap();
    assert_eq!(info.bytes_done, stored);
    for (i, done) in info.done.iter().enumerate() {
        if *done {
            assert_eq!(
                &store.read_chunk(&d, i as u32).await.unwrap()[..],
                chunk(&big, i as u32)
            );
        }
    }
    let small = data(1 << 20, 302);
    let err = store
        .put_small(Digest::of(&small), &small)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");

    // Freeing the space makes the store usable again.
    assert!(store.discard_partial(&d).await.unwrap());
    assert!(store.discard_partial(&ix.blob).await.unwrap());
    let sd = store_blob(&store, &small).await;
    assert_eq!(store.read_small(&sd).await.unwrap(), small);
    store.put_small(Digest::of(b"m"), b"m").await.unwrap();
    drop(store);
    let store = Store::open(cfg(&dir, None)).await.unwrap();
    assert!(store.contains(&sd).await);
    assert_eq!(store.usage(), small.len() as u64 + 1);
}
