//! Unpacking an imported image into a snapshotter, as containerd's own unpacker does: per layer,
//! Stat the chain ID (done already?), else Prepare a snapshot on the parent chain, Apply the layer
//! through the diff service (which checks the uncompressed digest), Commit it under the chain ID.
//! Pod start then finds the snapshots ready instead of unpacking first.

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor;
use preheat_core::Digest;

use super::ContainerdRuntime;
use crate::runtime::stored::StoredImage;
use crate::runtime::RuntimeError;

/// `ChainID(L0..Ln)`: `L0`, then `sha256(parent + " " + diff)` (the OCI image spec's definition).
pub(crate) fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => *diff,
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl ContainerdRuntime {
    /// Unpacks `img` into `snapshotter`; returns the top chain ID.
    pub(super) async fn unpack(
        &self,
        lease: &MetadataValue<Ascii>,
        snapshotter: &str,
        img: &StoredImage,
    ) -> Result<Option<Digest>, RuntimeError> {
        let diff_ids = img.diff_ids()?;
        let chains = chain_ids(&diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        for (i, (layer, chain)) in img.image.layers.iter().zip(&chains).enumerate() {
            let stat = StatSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: chain.to_string(),
            };
            match snapshots.stat(self.req(stat, Some(lease))).await {
                Ok(_) => continue,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(RuntimeError::containerd("snapshots stat", s)),
            }
            let key = format!(
                "extract-image-preheat-{:016x} {chain}",
                rand::random::<u64>()
            );
            let parent = i
                .checked_sub(1)
                .and_then(|p| chains.get(p))
                .map(ToString::to_string)
                .unwrap_or_default();
            let prepare = PrepareSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.clone(),
                parent,
                labels: Default::default(),
            };
            let mounts = snapshots
                .prepare(self.req(prepare, Some(lease)))
                .await
                .map_err(|s| RuntimeError::containerd("snapshots prepare", s))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.to_string(),
                    size: i64::try_from(layer.size).unwrap_or(i64::MAX),
                    annotations: Default::default(),
                }),
                mounts,
                payloads: Default::default(),
                sync_fs: false,
            };
            let applied = diff.apply(self.req(apply, Some(lease))).await;
            let result = match applied {
                Ok(resp) => {
                    let got = resp.into_inner().applied.map(|d| d.digest);
                    if got.as_deref() == diff_ids.get(i).map(ToString::to_string).as_deref() {
                        let commit = CommitSnapshotRequest {
                            snapshotter: snapshotter.to_owned(),
                            name: chain.to_string(),
                            key: key.clone(),
                            labels: Default::default(),
                        };
                        match snapshots.commit(self.req(commit, Some(lease))).await {
                            Ok(_) => Ok(()),
                            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                            Err(s) => Err(RuntimeError::containerd("snapshots commit", s)),
                        }
                    } else {
                        Err(RuntimeError::containerd(
                            "diff apply",
                            Status::data_loss(format!(
                                "layer {} unpacked to {got:?}, its config says {:?}",
                                layer.digest,
                                diff_ids.get(i)
                            )),
                        ))
                    }
                }
                Err(s) => Err(RuntimeError::containerd("diff apply", s)),
            };
            if result.is_err() {
                let remove = RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key,
                };
                let _ = snapshots.remove(self.req(remove, Some(lease))).await;
            }
            result?;
        }
        Ok(chains.last().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a, b]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
