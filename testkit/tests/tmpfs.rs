//! TmpfsMount: a real size-limited mount that fills up, and is gone after drop.

use std::io::Write;

use preheat_testkit::TmpfsMount;

fn mounted(path: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

#[test]
fn fills_up_and_unmounts_on_drop() -> anyhow::Result<()> {
    let mount = TmpfsMount::new(1 << 20)?;
    let path = mount.path().to_path_buf();
    assert!(mounted(&path));
    let mut f = std::fs::File::create(path.join("big"))?;
    let chunk = vec![7u8; 64 << 10];
    let mut err = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 1 MiB tmpfs cannot take 4 MiB");
    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
    drop(f);
    drop(mount);
    assert!(!mounted(&path));
    assert!(!path.exists());
    Ok(())
}
