//! The result of a run: text, JSON and an SVG chart (hand-drawn: plotters needs system
//! fonts to lay out text, which a server image may not have).

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchConfig;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// The summary of a histogram of microseconds (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub load: String,
    pub duration_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Error counts by kind (HTTP status or gRPC code).
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Successful requests per second.
    pub throughput: f64,
    pub latency_us: Latency,
    /// Latency of the failed requests (e.g. how fast an overloaded server says 429).
    pub error_latency_us: Latency,
    /// Completed requests in each second of the run.
    pub per_second: Vec<u64>,
    /// (percentile, latency µs) points of the distribution, for plotting.
    pub distribution: Vec<(f64, u64)>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &BenchConfig,
        target: String,
        elapsed: Duration,
        ok: u64,
        errors: u64,
        first_error: Option<String>,
        h: &Histogram<u64>,
        per_second: Vec<u64>,
    ) -> Self {
        let load = match config.rate {
            Some(rate) => format!("open loop, {rate} req/s"),
            None => format!("closed loop, concurrency {}", config.concurrency),
        };
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        let latency_us = Latency::of(h);
        let distribution = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
            .iter()
            .map(|&p| (p * 100.0, q(p)))
            .collect();
        Report {
            target,
            load,
            duration_s: elapsed.as_secs_f64(),
            ok,
            errors,
            first_error,
            error_kinds: Default::default(),
            throughput: ok as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_us,
            error_latency_us: Latency::default(),
            per_second,
            distribution,
        }
    }

    /// A few human-readable lines.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = format!(
            "{} ({}), {:.1} s\n  throughput  {:.0} req/s ({} ok, {} errors)\n  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            self.target,
            self.load,
            self.duration_s,
            self.throughput,
            self.ok,
            self.errors,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.mean / 1000.0
        );
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(out, "  errors {kind}: {n}");
        }
        if self.errors > 0 {
            let e = &self.error_latency_us;
            let _ =
                writeln!(out, "  error latency ms  p50 {:.3}  p99 {:.3}  max {:.3}", ms(e.p50), ms(e.p99), ms(e.max));
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "  first error: {e}");
        }
        out
    }

    /// Two panels: latency by percentile (log scale) and throughput per second.
    pub fn to_svg(&self) -> String {
        let (w, h) = (900.0, 380.0);
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='20' y='22' font-size='15'>{}: {} — {:.0} req/s, p99 {:.3} ms</text>\n",
            escape(&self.target),
            escape(&self.load),
            self.throughput,
            self.latency_us.p99 as f64 / 1000.0
        );
        // Left panel: latency vs percentile, x on a "nines" scale.
        let (x0, y0, pw, ph) = (60.0, 50.0, 360.0, 280.0);
        let nines = |p: f64| -(1.0 - (p / 100.0).min(0.99999)).log10(); // 0 .. 5
        let max_us = self.distribution.iter().map(|d| d.1).max().unwrap_or(1).max(1) as f64;
        let min_us = self.distribution.iter().map(|d| d.1).filter(|&v| v > 0).min().unwrap_or(1).max(1) as f64;
        let (lo, hi) = (min_us.log10().floor(), max_us.log10().ceil().max(min_us.log10().floor() + 1.0));
        let px = |p: f64| x0 + nines(p) / 5.0 * pw;
        let py = |us: f64| y0 + ph - (us.max(1.0).log10() - lo) / (hi - lo) * ph;
        let _ = writeln!(svg, "<rect x='{x0}' y='{y0}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>");
        for (label, p) in [("p0", 0.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99)] {
            let _ =
                writeln!(svg, "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{label}</text>", px(p), y0 + ph + 16.0);
        }
        let mut decade = lo;
        while decade <= hi {
            let us = 10f64.powf(decade);
            let text = if us >= 1000.0 { format!("{} ms", us / 1000.0) } else { format!("{us} µs") };
            let _ = writeln!(svg, "<text x='{:.1}' y='{:.1}' text-anchor='end'>{text}</text>", x0 - 4.0, py(us) + 4.0);
            decade += 1.0;
        }
        let points: Vec<String> =
            self.distribution.iter().map(|&(p, us)| format!("{:.1},{:.1}", px(p), py(us as f64))).collect();
        let _ =
            writeln!(svg, "<polyline fill='none' stroke='#c0392b' stroke-width='2' points='{}'/>", points.join(" "));
        let _ = writeln!(
            svg,
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>latency by percentile (log)</text>",
            x0 + pw / 2.0,
            y0 - 6.0
        );

        // Right panel: completions per second.
        let (x1, pw2) = (500.0, 360.0);
        let peak = self.per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
        let n = self.per_second.len().max(1) as f64;
        let _ = writeln!(svg, "<rect x='{x1}' y='{y0}' width='{pw2}' height='{ph}' fill='none' stroke='#888'/>");
        let points: Vec<String> = self
            .per_second
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("{:.1},{:.1}", x1 + (i as f64 + 0.5) / n * pw2, y0 + ph - c as f64 / peak * ph))
            .collect();
        let _ =
            writeln!(svg, "<polyline fill='none' stroke='#2471a3' stroke-width='2' points='{}'/>", points.join(" "));
        let _ = writeln!(svg, "<text x='{:.1}' y='{:.1}' text-anchor='end'>{peak:.0}/s</text>", x1 - 4.0, y0 + 4.0);
        let _ = writeln!(svg, "<text x='{:.1}' y='{:.1}' text-anchor='end'>0</text>", x1 - 4.0, y0 + ph);
        let _ = writeln!(
            svg,
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>requests per second over {n:.0} s</text>",
            x1 + pw2 / 2.0,
            y0 - 6.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, TargetSpec};

    #[test]
    fn report_numbers_and_svg() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for us in 1..=1000 {
            h.record(us).expect("record");
        }
        let config = BenchConfig {
            target: TargetSpec {
                protocol: Protocol::RestJson,
                url: String::new(),
                model: "m".into(),
                version: None,
                batch: 1,
                input_file: None,
                model_path: None,
                connections: 1,
            },
            concurrency: 4,
            rate: None,
            duration: Duration::from_secs(2),
            requests: None,
            warmup: Duration::ZERO,
            progress: false,
        };
        let r = Report::new(
            &config,
            "rest-json m".into(),
            Duration::from_secs(2),
            1000,
            3,
            Some("boom".into()),
            &h,
            vec![400, 600],
        );
        assert_eq!(r.throughput, 500.0);
        assert!((499..=501).contains(&r.latency_us.p50), "{}", r.latency_us.p50);
        assert!((989..=991).contains(&r.latency_us.p99), "{}", r.latency_us.p99);
        assert!(r.to_text().contains("500 req/s (1000 ok, 3 errors)"));
        assert!(r.to_text().contains("first error: boom"));
        let svg = r.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["latency_us"]["max"], 1000);
    }
}
