//! Pull progress: an indicatif bar on a terminal, periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image_preheat::pull::PullProgress;
use indicatif::{ProgressBar, ProgressStyle};
use preheat_core::Digest;

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    reference: String,
    total: AtomicU64,
    done: AtomicU64,
    last_log: Mutex<Instant>,
}

impl Progress {
    pub fn new(reference: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(reference.to_owned());
            bar
        });
        Self {
            bar,
            reference: reference.to_owned(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn maybe_log(&self) {
        let mut last = match self.last_log.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            tracing::info!(
                reference = %self.reference,
                bytes = self.done.load(Ordering::Relaxed),
                total_bytes = self.total.load(Ordering::Relaxed),
                "pull progress"
            );
        }
    }
}

impl PullProgress for Progress {
    fn start(&self, total_bytes: u64, already: u64) {
        self.total.store(total_bytes, Ordering::Relaxed);
        self.done.store(already, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total_bytes);
            bar.set_position(already);
        } else {
            tracing::info!(reference = %self.reference, total_bytes, already_stored = already, "pull started");
        }
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None => self.maybe_log(),
        }
    }

    fn blob_done(&self, digest: &Digest) {
        if self.bar.is_none() {
            tracing::info!(reference = %self.reference, %digest, "blob stored");
        }
    }

    fn message(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => tracing::info!(reference = %self.reference, detail = msg, "pull"),
        }
    }
}
