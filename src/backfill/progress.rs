//! Progress of a batch job: an indicatif bar with rate and ETA when stderr
//! is a terminal, otherwise a plain line every few seconds (logs, CI).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the plain-line mode prints.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress over a number of units (entity groups, rows), known at the
/// start or learnt along the way ([`Progress::add_total`]).
pub struct Progress {
    what: &'static str,
    /// What is counted (default `entities`).
    unit: &'static str,
    total: AtomicU64,
    done: AtomicU64,
    keys: AtomicU64,
    start: Instant,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise.
    pub fn new(what: &'static str, total: u64) -> Progress {
        Progress::with_terminal(what, total, std::io::stderr().is_terminal())
    }

    /// No output at all (tests, benches).
    pub fn hidden(what: &'static str, total: u64) -> Progress {
        let mut p = Progress::with_terminal(what, total, false);
        p.bar = Some(ProgressBar::with_draw_target(
            Some(total),
            ProgressDrawTarget::hidden(),
        ));
        p
    }

    fn with_terminal(what: &'static str, total: u64, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} entities  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            unit: "entities",
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            start: Instant::now(),
            bar,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Counts `unit` (e.g. `events`) instead of entities.
    pub fn with_unit(mut self, unit: &'static str) -> Progress {
        self.unit = unit;
        if let Some(bar) = &self.bar {
            let style = ProgressStyle::with_template(&format!(
                "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}  {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
        }
        self
    }

    /// `units` more to do (when the total is learnt along the way).
    pub fn add_total(&self, units: u64) {
        self.total.fetch_add(units, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc_length(units);
        }
    }

    /// `units` more done, having written `keys` store keys.
    pub fn advance(&self, units: u64, keys: u64) {
        let done = self.done.fetch_add(units, Ordering::Relaxed) + units;
        let keys = self.keys.fetch_add(keys, Ordering::Relaxed) + keys;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            if keys > 0 {
                bar.set_message(format!("{:.0} keys/s", keys as f64 / secs));
            }
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < PLAIN_EVERY {
            return;
        }
        *last = Instant::now();
        let rate = done as f64 / secs;
        let unit = self.unit;
        let total = self.total.load(Ordering::Relaxed);
        let eta = if rate > 0.0 {
            total.saturating_sub(done) as f64 / rate
        } else {
            0.0
        };
        let keys = if keys > 0 {
            format!(", {:.0} keys/s", keys as f64 / secs)
        } else {
            String::new()
        };
        eprintln!(
            "{}: {done}/{} {unit} ({:.0}%), {rate:.0} {unit}/s{keys}, eta {eta:.0} s",
            self.what,
            total,
            100.0 * done as f64 / total.max(1) as f64,
        );
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
