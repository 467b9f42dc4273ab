#![allow(clippy::unwrap_used)] // test code

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use preheat_store::{ImageRecord, StoreConfig};
use prometheus_client::registry::Registry;

use super::*;
use crate::agent::image_list::parse;

const WAIT: Duration = Duration::from_secs(30);

/// A fake source: each fetch sleeps `delay`, fails while `fail_first` says so, counts calls and
/// the most fetches in flight at once.
#[derive(Default)]
struct FakeSource {
    delay: Duration,
    fail_first: usize,
    hang: bool,
    calls: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl ImageSource for FakeSource {
    fn fetch<'a>(
        &'a self,
        reference: &'a Reference,
        progress: Arc<dyn PullProgress>,
    ) -> BoxFuture<'a, anyhow::Result<Fetched>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            progress.start(100, 0);
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            progress.advance(100);
            self.running.fetch_sub(1, Ordering::SeqCst);
            if n < self.fail_first {
                anyhow::bail!("registry said no");
            }
            Ok(Fetched {
                manifest: Digest::of(reference.to_string().as_bytes()),
                total_bytes: 100,
                registry_bytes: 100,
                peer_bytes: 0,
                present_bytes: 0,
            })
        })
    }
}

/// A fake runtime that holds what was imported into it.
#[derive(Default)]
struct FakeRuntime {
    images: Mutex<Vec<Digest>>,
    imports: AtomicUsize,
}

impl ImageRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }
    fn has_image<'a>(
        &'a self,
        _: &'a Reference,
        m: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(self.images.lock().unwrap().contains(m)) })
    }
    fn import<'a>(
        &'a self,
        _: &'a Store,
        _: &'a Reference,
        m: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.imports.fetch_add(1, Ordering::SeqCst);
            self.images.lock().unwrap().push(*m);
            Ok(())
        })
    }
}

struct Harness {
    rec: Reconciler,
    list: watch::Sender<Arc<ImageList>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(
    source: Arc<FakeSource>,
    runtimes: Vec<Arc<dyn ImageRuntime>>,
    concurrency: usize,
    timeout: Duration,
    text: &str,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let metrics = AgentMetrics::register(&mut Registry::default());
    let cfg = ReconcileConfig {
        interval: Duration::from_secs(3600),
        concurrency,
        pulling_timeout: timeout,
        import_grace: Duration::from_secs(1),
        retry_min: Duration::from_millis(50),
    };
    let rec = Reconciler::new(store, source, runtimes, metrics, cfg);
    let (list, rx) = watch::channel(Arc::new(parse(text)));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(rec.clone().run(rx, cancel.clone()));
    Harness {
        rec,
        list,
        cancel,
        task,
        _dir: dir,
    }
}

impl Harness {
    async fn wait(&self, what: &str, pred: impl Fn(&Status) -> bool) {
        tokio::time::timeout(WAIT, async {
            while !pred(&self.rec.status) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: {:?}", self.rec.status.views()));
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn state(s: &Status, image: &str) -> Option<State> {
    s.get(image).map(|v| v.state)
}

#[tokio::test]
async fn at_most_concurrency_images_are_fetched_at_once() {
    let source = Arc::new(FakeSource {
        delay: Duration::from_millis(100),
        ..FakeSource::default()
    });
    let text = "a:1\nb:1\nc:1\nd:1\ne:1\n";
    let h = start(source.clone(), vec![], 2, WAIT, text).await;
    h.wait("all complete", |s| {
        let v = s.views();
        v.len() == 5
            && v.iter()
                .all(|i| i.state == State::Complete && i.progress == 1.0)
    })
    .await;
    assert_eq!(source.max_running.load(Ordering::SeqCst), 2);
    assert_eq!(source.calls.load(Ordering::SeqCst), 5);
    let image = "docker.io/library/a:1";
    assert_eq!(h.rec.metrics.preheat_count(image, Source::Registry), 1);
    h.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_until_they_succeed() {
    let source = Arc::new(FakeSource {
        fail_first: 3,
        ..FakeSource::default()
    });
    let h = start(source.clone(), vec![], 1, WAIT, "app:1").await;
    let image = "docker.io/library/app:1";
    h.wait("complete after retries", |s| {
        state(s, image) == Some(State::Complete)
    })
    .await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 4);
    let v = h.rec.status.get(image).unwrap();
    assert_eq!(v.attempts, 0, "a success resets the attempts");
    assert!(v.error.is_none());
    h.stop().await;
}

#[tokio::test]
async fn a_fetch_over_the_pulling_timeout_fails_with_a_reason() {
    let source = Arc::new(FakeSource {
        hang: true,
        ..FakeSource::default()
    });
    let h = start(source, vec![], 1, Duration::from_millis(200), "app:1").await;
    let image = "docker.io/library/app:1";
    h.wait("failed", |s| state(s, image) == Some(State::Failed))
        .await;
    let v = h.rec.status.get(image).unwrap();
    assert!(v.error.unwrap().contains("PULLING_TIMEOUT"));
    assert!(v.attempts >= 1);
    h.stop().await;
}

#[tokio::test]
async fn images_are_imported_once_and_skipped_while_the_runtime_has_them() {
    let source = Arc::new(FakeSource::default());
    let rt = Arc::new(FakeRuntime::default());
    let h = start(source.clone(), vec![rt.clone()], 1, WAIT, "app:1").await;
    let image = "docker.io/library/app:1";
    h.wait("complete", |s| {
        s.get(image)
            .is_some_and(|v| v.state == State::Complete && v.in_runtime)
    })
    .await;
    assert_eq!(rt.imports.load(Ordering::SeqCst), 1);

    // Record the image as complete in the store, as a real fetch does; a new pass (on-demand
    // request) then finds it in the store and the runtime and fetches nothing.
    let manifest = Digest::of(image.as_bytes());
    h.rec
        .store
        .put_small(manifest, image.as_bytes())
        .await
        .unwrap();
    h.rec
        .store
        .put_image(ImageRecord {
            reference: image.to_owned(),
            manifest,
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index: None,
            platform: None,
            blobs: vec![],
        })
        .await
        .unwrap();
    let calls = source.calls.load(Ordering::SeqCst);
    // Forget what the agent knew, so only a new check can make it complete again.
    h.rec.status.update(image, |e| {
        e.state = State::Absent;
        e.in_runtime = false;
    });
    h.rec.request(&["app:1".parse().unwrap()]);
    h.wait("checked again", |s| {
        s.lock()
            .get(image)
            .is_some_and(|e| e.state == State::Complete && e.in_runtime && !e.scheduled)
    })
    .await;
    assert_eq!(source.calls.load(Ordering::SeqCst), calls, "no fetch");
    assert_eq!(rt.imports.load(Ordering::SeqCst), 1, "no second import");
    h.stop().await;
}

#[tokio::test]
async fn images_removed_from_the_list_are_forgotten() {
    let source = Arc::new(FakeSource::default());
    let h = start(source, vec![], 1, WAIT, "a:1\nb:1").await;
    h.wait("both complete", |s| {
        s.views()
            .iter()
            .filter(|v| v.state == State::Complete)
            .count()
            == 2
    })
    .await;
    h.list.send_replace(Arc::new(parse("b:1\nc:1")));
    h.wait("a forgotten, c complete", |s| {
        s.get("docker.io/library/a:1").is_none()
            && state(s, "docker.io/library/c:1") == Some(State::Complete)
    })
    .await;
    assert!(!h.rec.status.get("docker.io/library/b:1").unwrap().on_demand);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_abandons_fetches_promptly() {
    let source = Arc::new(FakeSource {
        hang: true,
        ..FakeSource::default()
    });
    let h = start(source, vec![], 1, WAIT, "app:1").await;
    h.wait("fetching", |s| {
        state(s, "docker.io/library/app:1") == Some(State::Fetching)
    })
    .await;
    h.stop().await;
}
