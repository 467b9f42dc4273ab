//! Results of a run (simulated or measured in the lab) and their forms: percentiles, a markdown
//! table, JSON (camelCase) and an SVG plot of per-host completion times.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{Bound, SimConfig};

/// One node's outcome; times in seconds from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub start: f64,
    /// When it had every blob; `None` if it never did.
    pub done: Option<f64>,
    pub killed: bool,
    pub puller: bool,
    pub received: u64,
    pub sent: u64,
}

/// Transfer counters summed over every node and blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub requests: u64,
    pub busy: u64,
    pub declined: u64,
    pub timeouts: u64,
    pub failures: u64,
    pub duplicates: u64,
}

/// The outcome of one simulated run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimResult {
    pub nodes: usize,
    pub image_bytes: u64,
    pub bound: Bound,
    pub bound_seconds: f64,
    /// Completion (done − start) percentiles over nodes that were not killed; `None` when some
    /// live node never completed.
    pub p50: Option<f64>,
    pub p100: Option<f64>,
    /// Last completion, from time zero (differs from p100 in rolling runs).
    pub makespan: Option<f64>,
    pub origin_bytes: u64,
    pub unfinished: usize,
    pub events: u64,
    pub puller_killed: bool,
    pub counters: Counters,
    pub per_node: Vec<NodeResult>,
}

impl SimResult {
    pub fn new(
        cfg: &SimConfig,
        counters: Counters,
        per_node: Vec<NodeResult>,
        origin_bytes: u64,
        events: u64,
        puller_killed: bool,
    ) -> Self {
        let live: Vec<&NodeResult> = per_node.iter().filter(|n| !n.killed).collect();
        let unfinished = live.iter().filter(|n| n.done.is_none()).count();
        let times: Vec<f64> = live
            .iter()
            .filter_map(|n| n.done.map(|d| d - n.start))
            .collect();
        let complete = unfinished == 0 && !times.is_empty();
        let bound = cfg.bound();
        Self {
            nodes: per_node.len(),
            image_bytes: cfg.image_bytes(),
            bound_seconds: bound.seconds(),
            bound,
            p50: percentile(&times, 50.0),
            p100: complete.then(|| percentile(&times, 100.0)).flatten(),
            makespan: complete.then(|| live.iter().filter_map(|n| n.done).fold(0.0, f64::max)),
            origin_bytes,
            unfinished,
            events,
            puller_killed,
            counters,
            per_node,
        }
    }

    /// Completion times (done − start) of the nodes that completed.
    pub fn completions(&self) -> Vec<f64> {
        self.per_node
            .iter()
            .filter_map(|n| n.done.map(|d| d - n.start))
            .collect()
    }
}

/// Nearest-rank percentile; `None` for no samples.
pub fn percentile(samples: &[f64], pct: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    // pct in [0, 100] keeps the rank in 1..=len.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((pct / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

/// One row of a benchmark table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub scenario: String,
    pub p50: Option<f64>,
    pub p100: Option<f64>,
    pub origin_bytes: Option<u64>,
    /// p100 divided by the Kumar–Ross bound.
    pub ratio_to_bound: Option<f64>,
    /// Registry-direct p100 divided by this p100.
    pub speedup_vs_direct: Option<f64>,
    /// Per-host completion seconds (for the plot).
    pub completions: Vec<f64>,
    pub note: String,
    /// Lab rows: the machine's CPU-seconds (all cores) per GiB delivered to the hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_gib: Option<f64>,
}

impl Row {
    pub fn new(
        scenario: &str,
        completions: Vec<f64>,
        origin_bytes: Option<u64>,
        bound: f64,
    ) -> Self {
        let p100 = percentile(&completions, 100.0);
        Self {
            scenario: scenario.to_owned(),
            p50: percentile(&completions, 50.0),
            p100,
            origin_bytes,
            ratio_to_bound: p100.map(|p| p / bound),
            speedup_vs_direct: None,
            completions,
            note: String::new(),
            cpu_per_gib: None,
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Fills `speedup_vs_direct` of every row from the row named `direct`.
pub fn fill_speedups(rows: &mut [Row], direct: &str) {
    let base = rows
        .iter()
        .find(|r| r.scenario == direct)
        .and_then(|r| r.p100);
    for r in rows {
        r.speedup_vs_direct = base.zip(r.p100).map(|(b, p)| b / p);
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

/// A markdown table of `rows`; `image_bytes` turns origin bytes into a ratio.
pub fn markdown(title: &str, rows: &[Row], image_bytes: u64) -> String {
    let mut s = format!(
        "### {title}\n\n| scenario | p50 (s) | p100 (s) | origin bytes | × bound (p100) | speed-up vs registry-direct | note |\n|---|---:|---:|---:|---:|---:|---|\n"
    );
    for r in rows {
        let origin = r.origin_bytes.map_or_else(
            || "—".to_owned(),
            |b| {
                format!(
                    "{} MiB ({:.2}× image)",
                    b >> 20,
                    b as f64 / image_bytes.max(1) as f64
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            fmt_opt(r.p50, 1),
            fmt_opt(r.p100, 1),
            origin,
            fmt_opt(r.ratio_to_bound, 2),
            fmt_opt(r.speedup_vs_direct, 1),
            r.note
        );
    }
    s
}

const COLORS: [&str; 6] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d",
];

/// An SVG step plot: per row, the hosts' completion times sorted ascending; a dashed line at the
/// bound.
pub fn svg(title: &str, rows: &[Row], bound: f64) -> String {
    let (w, h, left, bottom, top, right) = (880.0, 400.0, 60.0, 40.0, 30.0, 240.0);
    let ymax = rows
        .iter()
        .flat_map(|r| r.completions.iter().copied())
        .fold(bound, f64::max)
        * 1.05;
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">{}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">hosts, by completion (fraction)</text>\n",
        escape(title),
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h,
        left + plot_w / 2.0,
        h - 8.0
    );
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0} s</text>",
            left - 4.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{by:.1}\" x2=\"{}\" y2=\"{by:.1}\" stroke=\"gray\" stroke-dasharray=\"6 4\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" fill=\"gray\">Kumar–Ross bound {bound:.1} s</text>",
        left + plot_w,
        left + plot_w + 6.0,
        y(bound) + 4.0,
        by = y(bound)
    );
    for (k, r) in rows.iter().enumerate() {
        let mut v = r.completions.clone();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let color = COLORS[k % COLORS.len()];
        let n = v.len() as f64;
        let mut pts = format!("{left:.1},{:.1}", y(v[0]));
        for (i, t) in v.iter().enumerate() {
            let x0 = left + plot_w * i as f64 / n;
            let x1 = left + plot_w * (i + 1) as f64 / n;
            let _ = write!(pts, " {x0:.1},{:.1} {x1:.1},{:.1}", y(*t), y(*t));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{pts}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            left + plot_w + 6.0,
            top + 16.0 * (k as f64 + 2.0),
            escape(&r.scenario)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn table_and_plot_name_every_scenario() {
        let mut rows = vec![
            Row::new("registry-direct", vec![10.0, 20.0], Some(2 << 20), 5.0),
            Row::new("image-preheat", vec![5.0, 10.0], Some(1 << 20), 5.0),
        ];
        fill_speedups(&mut rows, "registry-direct");
        assert_eq!(rows[1].speedup_vs_direct, Some(2.0));
        let md = markdown("p", &rows, 1 << 20);
        assert!(
            md.contains("| image-preheat | 5.0 | 10.0 | 1 MiB (1.00× image) | 2.00 | 2.0 |"),
            "{md}"
        );
        let svg = svg("p <x>", &rows, 5.0);
        assert!(svg.contains("registry-direct") && svg.contains("p &lt;x&gt;"));
    }
}
