//! The `nextbest` command line: parses arguments, sets up logging, and calls
//! into the library. Nothing else lives here.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nextbest::backfill::load::{self, BackfillJob};
use nextbest::config::{Config, StoreConfig};
use nextbest::features::store;
use nextbest::features::FeatureSet;
use nextbest::model::registry::{parse_version, ModelSpec, ModelStatus, Registry};

/// mimalloc: the backfill's aggregation allocates many small values on
/// every core; with glibc malloc it ran at half the speed (benches/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use nextbest::model::scorer::{LoadOptions, LoadedModel};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "nextbest",
    version,
    about = "Real-time next-best-action server"
)]
struct Cli {
    /// Config file (default: $NEXTBEST_CONFIG, else ./nextbest.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (and the Kafka consumer when brokers are configured).
    Serve {
        #[command(flatten)]
        preload: Preload,
        /// Where "now" comes from: `wall` (default), or `event` for
        /// replays and backtests, where it is the newest event applied
        /// (overrides NEXTBEST_CLOCK and the config's `clock`).
        #[arg(long)]
        clock: Option<nextbest::clock::ClockMode>,
    },
    /// Load event history and static enrichment into the online store
    /// (Redis when NEXTBEST_REDIS_URL is set; else the embedded store of this
    /// process, which `serve --backfill-*` keeps).
    Backfill {
        /// Event files or glob patterns: .jsonl (Kafka message format), .parquet, .csv.
        #[arg(long, num_args = 1..)]
        events: Vec<String>,
        /// Item catalog (.csv, .parquet, .jsonl): item_id + the item `static` features.
        #[arg(long)]
        items: Option<PathBuf>,
        /// Customer profiles: customer_id + the customer `static` features.
        #[arg(long)]
        customers: Option<PathBuf>,
        /// Load only events with ts <= this (ms since epoch; default now).
        #[arg(long)]
        as_of: Option<i64>,
        /// Entity groups per store call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Store calls in flight.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
    },
    /// Write point-in-time training rows for labelled decision moments.
    ExportTraining {
        /// Event files or glob patterns: .jsonl, .parquet, .csv.
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<String>,
        /// Labels (.csv or .parquet): customer_id,item_id,ts,label[,session_id][,context.*].
        #[arg(long)]
        labels: PathBuf,
        /// Output: Parquet if it ends in .parquet, else CSV.
        #[arg(long)]
        out: PathBuf,
        /// Item catalog for the item `static` features (as `backfill --items`).
        #[arg(long)]
        items: Option<PathBuf>,
        /// Customer profiles for the customer `static` features.
        #[arg(long)]
        customers: Option<PathBuf>,
    },
    /// Replay a history through the served path (features, candidates,
    /// model, rules) and report HR@k, NDCG@k, MRR@k and candidate recall of
    /// the answer at each decision, beside baselines on the same decisions.
    /// Uses a private embedded store; the online store is not touched.
    Evaluate {
        /// Event files or glob patterns: .jsonl (Kafka message format), .parquet, .csv.
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<String>,
        /// Item catalog for the item `static` features (as `backfill --items`).
        #[arg(long)]
        items: Option<PathBuf>,
        /// Customer profiles for the customer `static` features.
        #[arg(long)]
        customers: Option<PathBuf>,
        /// Where decisions start, as a share of the history's time span.
        #[arg(long, default_value = "time=80%", conflicts_with = "split_at")]
        split: nextbest::evaluate::Split,
        /// Where decisions start, as a time (ms since the epoch).
        #[arg(long)]
        split_at: Option<i64>,
        /// The cut-off of HR@k, NDCG@k and MRR@k.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
        k: u16,
        /// Event types that are decisions (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "add_to_cart,purchase")]
        decisions: Vec<String>,
        /// Evaluate this model of the models folder (`name` or `name@version`)
        /// instead of the one serving.
        #[arg(long)]
        model: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write training labels (for `export-training --labels`) of
        /// the decision moments before the split: one row per candidate the
        /// served path ranked, label 1 for the item the customer took.
        #[arg(long)]
        labels_out: Option<PathBuf>,
        /// With --labels-out: negatives kept per moment (a stable sample of
        /// the candidates).
        #[arg(long, default_value_t = 30)]
        negatives: usize,
    },
    /// Model tools.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Business rules (`rules/*.toml`).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Event triggers (`triggers/*.toml`).
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
    },
    /// API keys for `[[security.keys]]` (see SECURITY.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 (hex) of the key read from standard input (one
    /// line; the trailing newline is not part of the key), for `sha256`.
    Hash,
    /// Make a new random key; print it once, and its `[[security.keys]]` entry.
    Generate {
        /// The entry's name (in logs and metric labels).
        #[arg(long)]
        name: String,
        /// `admin` or `client`.
        #[arg(long, default_value = "client", value_parser = ["admin", "client"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check a rules folder (or one file) against the feature definitions;
    /// exits non-zero on any error, printing `file:line:column: reason`.
    Check { path: PathBuf },
}

#[derive(Subcommand)]
enum TriggersCommand {
    /// Check a triggers folder (or one file) against the feature
    /// definitions; exits non-zero on any error, printing
    /// `file:line:column: reason`.
    Check { path: PathBuf },
}

/// `serve` options: history to load into the store before serving (useful
/// with the embedded store, which starts empty).
#[derive(clap::Args)]
struct Preload {
    /// Event files or globs to backfill before serving.
    #[arg(long = "backfill-events", num_args = 1..)]
    events: Vec<String>,
    /// Item catalog to load before serving.
    #[arg(long = "backfill-items")]
    items: Option<PathBuf>,
    /// Customer profiles to load before serving.
    #[arg(long = "backfill-customers")]
    customers: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Validate a models folder, one model, or one version folder.
    Check { dir: PathBuf },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // human-readable on a terminal, JSON lines otherwise (log shippers)
    if std::io::stdout().is_terminal() {
        builder.compact().init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // needs no config (and must work where none is readable)
    let command = match cli.command {
        Command::Keys { command } => return keys(command),
        other => other,
    };
    let mut cfg = Config::load(cli.config.as_deref())?;
    match command {
        Command::Serve { preload, clock } => {
            if let Some(c) = clock {
                cfg.clock = c;
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let dedupe_window_ms = cfg.store.dedupe_window_ms();
            let served = rt.block_on(async {
                let app = nextbest::app::App::build(cfg).await?;
                if !preload.events.is_empty() || preload.items.is_some() || preload.customers.is_some() {
                    let job = BackfillJob {
                        events: preload.events,
                        items: preload.items,
                        customers: preload.customers,
                        as_of: nextbest::now_ms(),
                        dedupe_window_ms,
                        ..BackfillJob::default()
                    };
                    let st = app.state();
                    let s = load::run(st.set.clone(), st.store.as_ref(), &job).await?;
                    eprintln!("{}", backfill_summary(&s));
                }
                println!("{}", app.summary());
                println!(
                    "  try:      curl -s -X POST {url}/v1/events -H 'content-type: application/json' -d '{{\"event_id\":\"e-1\",\"type\":\"add_to_cart\",\"customer_id\":\"c42\",\"ts\":'$(date +%s000)',\"item_id\":\"p7\",\"props\":{{\"price\":59.9,\"category\":\"shoes\"}}}}'\n            curl -s -X POST {url}/v1/recommend -H 'content-type: application/json' -d '{{\"customer_id\":\"c42\",\"k\":5,\"candidates\":[\"p1\",\"p7\",\"p9\"]}}'",
                    url = format!("http://127.0.0.1:{}", app.port())
                );
                app.run_until_stopped(nextbest::app::shutdown_signal()).await?;
                anyhow::Ok(())
            });
            // a blocking call still waiting on an unreachable broker (the
            // exit commit, which gave up after its timeout, or the
            // consumer's close) must not hold the exit (dropping the
            // runtime would wait for it): what it did not commit is
            // redelivered to the next consumer, harmlessly
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
        Command::Backfill {
            events,
            items,
            customers,
            as_of,
            batch,
            in_flight,
        } => {
            if events.is_empty() && items.is_none() && customers.is_none() {
                bail!("nothing to load: give --events, --items and/or --customers");
            }
            let job = BackfillJob {
                events,
                items,
                customers,
                as_of: as_of.unwrap_or_else(nextbest::now_ms),
                batch,
                in_flight,
                dedupe_window_ms: cfg.store.dedupe_window_ms(),
            };
            backfill(cfg, job)
        }
        Command::Evaluate {
            events,
            items,
            customers,
            split,
            split_at,
            k,
            decisions,
            model,
            json,
            labels_out,
            negatives,
        } => {
            use nextbest::evaluate::{EvaluateJob, Split};
            let decisions = decisions
                .iter()
                .map(|d| {
                    nextbest::event::EventType::parse(d.trim())
                        .with_context(|| format!("--decisions: unknown event type {d:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let model = model
                .map(|m| {
                    ModelSpec::parse(&m)
                        .with_context(|| format!("--model {m:?}: expected name or name@version"))
                })
                .transpose()?;
            let job = EvaluateJob {
                events,
                items,
                customers,
                split: split_at.map_or(split, Split::At),
                k: usize::from(k),
                decisions,
                model,
                labels_out,
                max_negatives: negatives,
                progress: !json || std::io::stderr().is_terminal(),
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = rt.block_on(nextbest::evaluate::evaluate(&cfg, &job))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::ExportTraining {
            events,
            labels,
            out,
            items,
            customers,
        } => {
            let set = Arc::new(FeatureSet::load(&cfg.features)?);
            let t = std::time::Instant::now();
            let job = nextbest::backfill::export::ExportJob {
                events,
                labels,
                out: out.clone(),
                items,
                customers,
            };
            let s = nextbest::backfill::export::export_training(set, &job)?;
            eprintln!(
                "export-training: {} events replayed, {} rows × {} features written to {} in {:.1} s",
                s.events,
                s.rows,
                s.columns,
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Models {
            command: ModelsCommand::Check { dir },
        } => models_check(&cfg, &dir),
        Command::Rules {
            command: RulesCommand::Check { path },
        } => rules_check(&cfg, &path),
        Command::Triggers {
            command: TriggersCommand::Check { path },
        } => triggers_check(&cfg, &path),
        Command::Keys { command } => keys(command),
    }
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    use nextbest::keys::{generate, hash_hex};
    match command {
        KeysCommand::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the key from standard input")?;
            let key = line.strip_suffix('\n').unwrap_or(&line);
            let key = key.strip_suffix('\r').unwrap_or(key);
            if key.is_empty() {
                bail!("no key on standard input (e.g. `printf %s \"$KEY\" | nextbest keys hash`)");
            }
            println!("{}", hash_hex(key.as_bytes()));
        }
        KeysCommand::Generate { name, role } => {
            let key = generate();
            eprintln!("key (shown once; give it to the caller, keep it out of the config):");
            println!("{key}");
            eprintln!("\nits entry for nextbest.toml:");
            println!(
                "\n[[security.keys]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"",
                hash_hex(key.as_bytes())
            );
        }
    }
    Ok(())
}

fn rules_check(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    let set = FeatureSet::load(&cfg.features)?;
    let rules = if path.is_file() {
        nextbest::rules::RuleSet::load_file_only(path, &set)
    } else {
        if !path.is_dir() {
            bail!(
                "{} is neither a rules folder nor a rule file",
                path.display()
            );
        }
        nextbest::rules::RuleSet::load(path, &set, None)
    };
    report_check(path, "rule", &rules.files, rules.rules.len())
}

fn triggers_check(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    use nextbest::triggers::{Overrides, TriggerSet};
    let set = FeatureSet::load(&cfg.features)?;
    let overrides = Overrides::default();
    let triggers = if path.is_file() {
        TriggerSet::load_file_only(path, &set, &overrides)
    } else {
        if !path.is_dir() {
            bail!(
                "{} is neither a triggers folder nor a trigger file",
                path.display()
            );
        }
        TriggerSet::load(path, &set, &overrides, None)
    };
    report_check(path, "trigger", &triggers.files, triggers.triggers.len())
}

/// Prints each file's status of a `check` (`noun`: rule, trigger); an
/// error if any file was rejected or there was none.
fn report_check(
    path: &Path,
    noun: &str,
    files: &[nextbest::rules::FileStatus],
    entries: usize,
) -> anyhow::Result<()> {
    for f in files {
        match &f.error {
            None => println!(
                "ok: {} ({} {noun}s: {})",
                f.file,
                f.rules.len(),
                f.rules.join(", ")
            ),
            Some(e) => println!("REJECTED {e}"),
        }
    }
    let rejected = files.iter().filter(|f| f.status == "rejected").count();
    if files.is_empty() {
        bail!("no *.toml {noun} files in {}", path.display());
    }
    if rejected > 0 {
        bail!("{rejected} of {} {noun} files rejected", files.len());
    }
    println!("{entries} {noun}s in {} files: all valid", files.len());
    Ok(())
}

fn backfill(cfg: Config, job: BackfillJob) -> anyhow::Result<()> {
    let set = Arc::new(FeatureSet::load(&cfg.features)?);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let store_cfg = StoreConfig {
            // bulk calls carry many events: allow them time
            timeout_ms: cfg.store.timeout_ms.max(30_000),
            ..cfg.store.clone()
        };
        if store_cfg.redis_url.is_none() {
            eprintln!(
                "backfill: NEXTBEST_REDIS_URL is not set; loading the embedded store of this process \
                 (checks and aggregates everything; to serve it, use `nextbest serve --backfill-events ...`)"
            );
        }
        let store = store::open(&store_cfg, set.clone()).await.with_context(|| {
            format!(
                "cannot connect to redis at {}",
                store_cfg.redis_url_for_logs().unwrap_or_default()
            )
        })?;
        eprintln!("backfill: into {}", store.describe());
        let s = load::run(set, store.as_ref(), &job).await?;
        println!("{}", backfill_summary(&s));
        if s.beyond_dedupe_window > 0 {
            eprintln!("{}", beyond_window_warning(&s, cfg.store.dedupe_window_secs));
        }
        anyhow::Ok(())
    })
}

fn backfill_summary(s: &load::BackfillSummary) -> String {
    // the aggregation runs alongside the write: write_secs covers both
    let secs = s.read_secs + s.write_secs;
    format!(
        "backfill: {} rows read from {} file(s), {} loaded ({} after --as-of, {} repeated ids), \
         {} static rows; {} entities / {} keys written; {} events were already applied \
         ({} entities had events applied before); {:.1} s (read {:.1}, aggregate and write {:.1}, \
         of which aggregating {:.1}), {:.0} rows/s",
        s.rows,
        s.files,
        s.selected,
        s.after_as_of,
        s.duplicate_ids,
        s.static_rows,
        s.entities,
        s.keys,
        s.already_applied,
        s.conflicts,
        secs,
        s.read_secs,
        s.write_secs,
        s.aggregate_secs,
        s.rows as f64 / secs.max(1e-9),
    )
}

fn beyond_window_warning(s: &load::BackfillSummary, window_secs: u64) -> String {
    format!(
        "backfill: warning: {} events are older than their entity's newest event by more than \
         store.dedupe_window_secs ({window_secs} s), so their ids are not remembered: loading \
         them again would count them again. To re-run a backfill of this history safely, raise \
         store.dedupe_window_secs to cover it (one sorted-set member per event per entity).",
        s.beyond_dedupe_window
    )
}

fn models_check(cfg: &Config, dir: &Path) -> anyhow::Result<()> {
    let set = FeatureSet::load(&cfg.features)?;
    let opts = LoadOptions {
        sessions: 1,
        intra_threads: 1,
        ort_dylib_path: cfg.ort_dylib_path.clone(),
    };
    nextbest::model::runtime::environment(cfg.ort_dylib_path.as_deref())?;
    if dir.join("model.toml").exists() || dir.join("model.onnx").exists() {
        let m = LoadedModel::load(dir, None, &set, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "ok: {} ({} inputs) in {}",
            m.id(),
            m.manifest.inputs.len(),
            dir.display()
        );
        return Ok(());
    }
    let is_model_dir = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .any(|e| e.file_name().to_str().and_then(parse_version).is_some());
    let (root, only) = if is_model_dir {
        (
            dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
            dir.file_name().and_then(|n| n.to_str()).map(str::to_string),
        )
    } else {
        (dir.to_path_buf(), None)
    };
    let reg = Registry::scan(&root, &set, &opts);
    let mut failures = reg.problems.clone();
    let mut checked = 0;
    for (name, entry) in &reg.models {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        for v in &entry.versions {
            checked += 1;
            match v.status {
                ModelStatus::Rejected => {
                    let reason = v.reason.clone().unwrap_or_default();
                    println!("REJECTED {name}/{}: {reason}", v.version);
                    failures.push(format!("{name}/{}: {reason}", v.version));
                }
                ModelStatus::Serving => println!("ok: {name}/{} (would serve)", v.version),
                ModelStatus::Pinned => println!("ok: {name}/{} (loaded)", v.version),
                ModelStatus::Standby => println!(
                    "ok: {name}/{} (manifest valid; a higher version serves)",
                    v.version
                ),
            }
        }
    }
    if checked == 0 {
        bail!("no model versions found under {}", dir.display());
    }
    if !failures.is_empty() {
        bail!("{} problem(s): {}", failures.len(), failures.join("; "));
    }
    Ok(())
}
