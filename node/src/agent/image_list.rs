//! The image list file (`IMAGE_LIST_PATH`): one reference per line, `#` starts a comment, blank
//! lines are ignored. An invalid line is logged and counted; the other lines still apply.
//!
//! The file's *directory* is watched (inotify through `notify`), not the file: Kubernetes updates
//! a mounted ConfigMap by writing a new `..<timestamp>` directory and renaming a `..data_tmp`
//! symlink over `..data`, so the file's own inode never changes. Any event in the directory
//! re-reads the file (through the symlinks) after a short debounce; the file is also re-read every
//! poll interval in case an event was missed. Subscribers see a new list only when the text changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use preheat_core::reference::Reference;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;

/// Events arriving this close together cause one re-read.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// A line that is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidLine {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// The parsed list: distinct references in file order, and the lines that were rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageList {
    pub images: Vec<Reference>,
    pub invalid: Vec<InvalidLine>,
}

/// Parses the list text; never fails as a whole.
pub fn parse(text: &str) -> ImageList {
    let mut list = ImageList::default();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        // A reference never contains '#', so everything after one is a comment.
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<Reference>() {
            Ok(r) => {
                if seen.insert(r.to_string()) {
                    list.images.push(r);
                }
            }
            Err(e) => list.invalid.push(InvalidLine {
                line: i + 1,
                text: line.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
    list
}

/// Watches `path`; the receiver holds the current list (empty until the file exists).
pub fn spawn(
    path: PathBuf,
    poll: Duration,
    metrics: AgentMetrics,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<ImageList>> {
    let (tx, rx) = watch::channel(Arc::new(ImageList::default()));
    tokio::spawn(run(path, poll, metrics, tx, cancel));
    rx
}

async fn run(
    path: PathBuf,
    poll: Duration,
    metrics: AgentMetrics,
    tx: watch::Sender<Arc<ImageList>>,
    cancel: CancellationToken,
) {
    // Capacity 1: one pending "something changed" is all the reader needs.
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let mut watcher = None;
    let mut warned = false;
    let mut last: Option<String> = None;
    let mut ticker = tokio::time::interval(poll);
    loop {
        if watcher.is_none() {
            // Retried every poll (the directory may appear later); warned about once.
            watcher = watch_dir(&path, ev_tx.clone(), !warned);
            warned = true;
        }
        reload(&path, &mut last, &metrics, &tx).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            Some(()) = ev_rx.recv() => {
                // Let the rest of an atomic swap land, then read once.
                tokio::time::sleep(DEBOUNCE).await;
                while ev_rx.try_recv().is_ok() {}
            }
        }
    }
}

fn watch_dir(path: &Path, tx: mpsc::Sender<()>, warn: bool) -> Option<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // Full means a re-read is already pending.
            let _ = tx.try_send(());
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            if warn {
                tracing::warn!(error = %e, "cannot create a file watcher; polling the image list");
            }
            return None;
        }
    };
    match w.watch(&dir, RecursiveMode::NonRecursive) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "watching the image list directory");
            Some(w)
        }
        Err(e) => {
            if warn {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "cannot watch the image list directory; polling it");
            }
            None
        }
    }
}

async fn reload(
    path: &Path,
    last: &mut Option<String>,
    metrics: &AgentMetrics,
    tx: &watch::Sender<Arc<ImageList>>,
) {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if last.as_deref() != Some("") {
                tracing::warn!(path = %path.display(), "image list file not found; no images listed");
            }
            String::new()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the image list; keeping the previous one");
            return;
        }
    };
    if last.as_deref() == Some(text.as_str()) {
        return;
    }
    let list = parse(&text);
    for bad in &list.invalid {
        tracing::warn!(path = %path.display(), line = bad.line, text = %bad.text, reason = %bad.reason,
            "invalid image list line ignored");
    }
    tracing::info!(
        path = %path.display(),
        images = list.images.len(),
        invalid = list.invalid.len(),
        "image list loaded"
    );
    metrics.image_list(list.images.len(), list.invalid.len());
    *last = Some(text);
    tx.send_replace(Arc::new(list));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn comments_blanks_duplicates_and_bad_lines() {
        let list = parse(
            "# images\n\nnginx:1.27\n  redis  # cache\nNOT A REF\ndocker.io/library/nginx:1.27\n#x\nbusybox@sha256:zz\n",
        );
        let names: Vec<String> = list.images.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/nginx:1.27",
                "docker.io/library/redis:latest"
            ]
        );
        assert_eq!(list.invalid.len(), 2);
        assert_eq!(list.invalid[0].line, 5);
        assert_eq!(list.invalid[0].text, "NOT A REF");
        assert_eq!(list.invalid[1].line, 8);
    }

    #[test]
    fn empty_text_is_an_empty_list() {
        assert_eq!(parse(""), ImageList::default());
        assert_eq!(parse("\n # only a comment\n"), ImageList::default());
    }
}
