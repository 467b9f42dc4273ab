//! Writing one blob into containerd's content store (the `Content.Write` stream): a STAT that
//! takes the ref's lock and tells where an interrupted write stopped, WRITEs of [`WRITE_CHUNK`]
//! bytes, then a COMMIT with the expected digest and size, which containerd verifies.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::time::Duration;

use containerd_client::services::v1::{WriteAction, WriteContentRequest, WriteContentResponse};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::{Code, Status, Streaming};
use preheat_core::Digest;
use preheat_store::Store;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::ContainerdRuntime;
use crate::runtime::RuntimeError;

/// Bytes per WRITE message (containerd accepts messages up to 16 MiB).
const WRITE_CHUNK: usize = 1 << 20;
/// A ref locked by another writer (a concurrent import of a shared layer) is retried this often.
const LOCKED_RETRIES: u32 = 40;
const LOCKED_DELAY: Duration = Duration::from_millis(500);

impl ContainerdRuntime {
    /// Makes sure containerd holds blob `digest` (from the store) with `labels` set.
    pub(super) async fn put_blob(
        &self,
        lease: &MetadataValue<Ascii>,
        store: &Store,
        digest: &Digest,
        size: u64,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let mut attempt = 0;
        loop {
            if self.has_content(digest).await? {
                return self.label(digest, labels).await;
            }
            attempt += 1;
            match self.write_once(lease, store, digest, size, &labels).await {
                Ok(()) => return Ok(()),
                Err(RuntimeError::Containerd { source, .. })
                    if source.code() == Code::AlreadyExists =>
                {
                    return self.label(digest, labels).await
                }
                Err(RuntimeError::Containerd { source, .. })
                    if source.code() == Code::Unavailable && attempt < LOCKED_RETRIES =>
                {
                    tracing::debug!(%digest, error = %source, "content ref busy, retrying");
                    tokio::time::sleep(LOCKED_DELAY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_once(
        &self,
        lease: &MetadataValue<Ascii>,
        store: &Store,
        digest: &Digest,
        size: u64,
        labels: &HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let total = i64::try_from(size).map_err(|_| too_large(digest))?;
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut session = Session {
            tx,
            responses: None,
        };
        session
            .send(WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: format!("image-preheat-{}", digest.hex()),
                total,
                expected: digest.to_string(),
                ..Default::default()
            })
            .await?;
        let responses = self
            .content()
            .write(self.req(requests, Some(lease)))
            .await
            .map_err(|s| RuntimeError::containerd("content write", s))?
            .into_inner();
        session.responses = Some(responses);
        let stat = session.recv().await?;
        let mut offset = u64::try_from(stat.offset).unwrap_or(0);
        if offset > size {
            offset = 0;
        }
        let path = store.blob_path(digest);
        let io_err = |source| RuntimeError::Io {
            path: path.clone(),
            source,
        };
        let mut file = store
            .open_blob(digest)
            .await
            .map_err(|source| RuntimeError::Store {
                digest: *digest,
                source,
            })?;
        file.seek(SeekFrom::Start(offset)).await.map_err(io_err)?;
        while offset < size {
            let len = usize::try_from(size - offset)
                .unwrap_or(WRITE_CHUNK)
                .min(WRITE_CHUNK);
            let mut data = vec![0u8; len];
            file.read_exact(&mut data).await.map_err(io_err)?;
            session
                .send(WriteContentRequest {
                    action: WriteAction::Write as i32,
                    offset: i64::try_from(offset).map_err(|_| too_large(digest))?,
                    data,
                    ..Default::default()
                })
                .await?;
            let resp = session.recv().await?;
            offset += len as u64;
            if u64::try_from(resp.offset).ok() != Some(offset) {
                return Err(protocol(format!(
                    "write of {digest} acknowledged at {} instead of {offset}",
                    resp.offset
                )));
            }
        }
        session
            .send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                total,
                offset: total,
                expected: digest.to_string(),
                labels: labels.clone(),
                ..Default::default()
            })
            .await?;
        let resp = session.recv().await?;
        if resp.digest != digest.to_string() {
            return Err(protocol(format!(
                "commit of {digest} answered digest {:?}",
                resp.digest
            )));
        }
        Ok(())
    }
}

/// Both halves of one `Content.Write` call.
struct Session {
    tx: mpsc::Sender<WriteContentRequest>,
    responses: Option<Streaming<WriteContentResponse>>,
}

impl Session {
    async fn send(&mut self, req: WriteContentRequest) -> Result<(), RuntimeError> {
        if self.tx.send(req).await.is_ok() {
            return Ok(());
        }
        // The call ended; its status says why.
        Err(match self.recv().await {
            Err(e) => e,
            Ok(_) => protocol("content write stream closed early".into()),
        })
    }

    async fn recv(&mut self) -> Result<WriteContentResponse, RuntimeError> {
        let Some(responses) = self.responses.as_mut() else {
            return Err(protocol("content write stream closed early".into()));
        };
        responses
            .message()
            .await
            .map_err(|s| RuntimeError::containerd("content write", s))?
            .ok_or_else(|| protocol("content write stream closed early".into()))
    }
}

fn protocol(msg: String) -> RuntimeError {
    RuntimeError::containerd("content write", Status::internal(msg))
}

fn too_large(digest: &Digest) -> RuntimeError {
    protocol(format!("blob {digest} is too large for containerd"))
}
